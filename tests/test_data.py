"""Conversations -> ids and labels; the dataset's checks; the collator."""

import json

import numpy as np
import pytest
import torch

from distill.conversation import IGNORE_INDEX, ConversationEncoder, DataError, expand_image_tokens
from distill.data import LlavaDataset, ModelView, PaddingCollator
from distill.modeling import build_processor, image_token_count
from tests.conftest import make_model


def supervised_text(tokenizer, ids, labels):
    return tokenizer.decode([int(i) for i, label in zip(ids, labels) if label != IGNORE_INDEX])


def test_only_assistant_turns_are_supervised_in_multi_turn_data(tokenizer):
    conversation = [
        {"from": "human", "value": "<image>\nWhat color is the circle?"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "Where is the red circle?"},
        {"from": "gpt", "value": "top left"},
    ]
    ids, labels = ConversationEncoder(tokenizer).encode(conversation)
    assert supervised_text(tokenizer, ids, labels) == "red<|im_end|>top left<|im_end|>"
    assert (labels[ids == tokenizer.convert_tokens_to_ids("<image>")] == IGNORE_INDEX).all()


def test_instruction_mask_holds_the_text_of_every_user_turn(tokenizer):
    conversation = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "<image>\nWhat color is the circle?"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "Where is the red circle?"},
        {"from": "gpt", "value": "top left"},
    ]
    ids, labels, instruction = ConversationEncoder(tokenizer).encode_with_instruction(conversation)
    assert tokenizer.decode(ids[instruction].tolist()) == "What color is the circle?Where is the red circle?"
    assert not (instruction & (labels != IGNORE_INDEX)).any()


def test_a_system_turn_is_never_supervised(tokenizer):
    conversation = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Which shape has no corners?"},
        {"from": "gpt", "value": "circle"},
    ]
    ids, labels = ConversationEncoder(tokenizer).encode(conversation)
    assert supervised_text(tokenizer, ids, labels) == "circle<|im_end|>"


@pytest.mark.parametrize(
    ("conversation", "message"),
    [
        ([], "non-empty list"),
        ([{"from": "gpt", "value": "hi"}], "starting with human"),
        ([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}], "alternate"),
        ([{"from": "human", "value": "a"}], "no gpt turn"),
        ([{"from": "robot", "value": "a"}], "turn 0 must be"),
        ([{"from": "human", "value": 3}], "turn 0 must be"),
        ([{"from": ["human"], "value": "a"}], "turn 0 must be"),  # not a crash on an unhashable role
    ],
)
def test_malformed_conversations_are_refused(tokenizer, conversation, message):
    with pytest.raises(DataError, match=message):
        ConversationEncoder(tokenizer).encode(conversation)


def test_image_placeholder_expands_and_is_never_supervised():
    ids = np.array([5, 3, 6, 7], dtype=np.int32)
    labels = np.array([-100, -100, -100, 7], dtype=np.int32)
    new_ids, new_labels = expand_image_tokens(ids, labels, image_token_id=3, num_image_tokens=4)
    assert new_ids.tolist() == [5, 3, 3, 3, 3, 6, 7]
    assert new_labels.tolist() == [-100] * 6 + [7]


def view(tokenizer, image_size=32, patch_size=16, max_length=256):
    processor = build_processor(tokenizer, image_size, patch_size)
    return ModelView.from_processor(processor, (image_size // patch_size) ** 2, max_length)


def test_dataset_items_match_the_model(shapes, tokenizer):
    model, processor = make_model(tokenizer)
    v = ModelView.from_processor(processor, image_token_count(model.config), 256)
    dataset = LlavaDataset(shapes / "train.json", {"student": v}, progress=False)
    batch = PaddingCollator(tokenizer.pad_token_id)([dataset[i] for i in range(4)])
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch.get("pixel_values"),
            labels=batch["labels"],
        )
    assert torch.isfinite(out.loss)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape


def write_records(tmp_path, shapes, records):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    (tmp_path / "images").mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        (tmp_path / "images" / name).write_bytes((shapes / "images" / "train" / "000000.png").read_bytes())
    return path


def good(i, image="images/a.png"):
    return {
        "id": str(i),
        "image": image,
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"},
            {"from": "gpt", "value": "a circle"},
        ],
    }


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"id": "x"}, "malformed record"),
        (
            {
                "image": "images/a.png",
                "conversations": [
                    {"from": "human", "value": "no placeholder"},
                    {"from": "gpt", "value": "x"},
                ],
            },
            "image-token mismatch",
        ),
        (
            {"conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "x"}]},
            "image-token mismatch",
        ),
        (good(9, image="images/missing.png"), "missing image"),
        (
            {
                "image": "images/a.png",
                "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "<image>\nx"}],
            },
            "image-token mismatch: <image> in a gpt turn",
        ),
    ],
)
@pytest.mark.parametrize("split_turns", [False, True])
def test_bad_records_name_the_file_and_index(tmp_path, shapes, tokenizer, bad, message, split_turns):
    path = write_records(tmp_path, shapes, [good(0), bad, good(2)])
    with pytest.raises(DataError, match=rf"data.json, record 1: {message}"):
        LlavaDataset(path, {"student": view(tokenizer)}, progress=False, split_turns=split_turns)
    dataset = LlavaDataset(
        path, {"student": view(tokenizer)}, skip_bad_records=True, progress=False, split_turns=split_turns
    )
    assert len(dataset) == 2
    assert "1 skipped" in dataset.report()


def test_split_turns_makes_one_example_per_question_each_with_the_image(tmp_path, shapes, tokenizer):
    conversation = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "What color is it?\n<image>"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "Where is it?"},
        {"from": "gpt", "value": "top left"},
    ]
    text_only = {"conversations": [{"from": "human", "value": "Which shape?"}, {"from": "gpt", "value": "a"}]}
    path = write_records(
        tmp_path, shapes, [{"image": "images/a.png", "conversations": conversation}, text_only]
    )
    dataset = LlavaDataset(path, {"student": view(tokenizer)}, progress=False, split_turns=True)
    assert len(dataset) == 3 and len(LlavaDataset(path, {"student": view(tokenizer)}, progress=False)) == 2
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    items = [dataset[i] for i in range(3)]
    for item, answer, question in zip(
        items, ["red", "top left", "a"], ["What color is it?", "Where is it?", "Which shape?"]
    ):
        ids, labels = item["input_ids"], item["labels"]
        assert supervised_text(tokenizer, ids, labels) == f"{answer}<|im_end|>"
        text = tokenizer.decode(ids[ids != image_id])
        assert "Be brief." in text or answer == "a"
        assert question in text and text.count("<|im_start|>user") == 1
    assert all(int((item["input_ids"] == image_id).sum()) == 4 for item in items[:2])  # 32 px / 16: 4 tokens
    assert "pixel_values" in items[1] and "pixel_values" not in items[2]


def test_a_record_that_fails_after_splitting_is_skipped_whole(tmp_path, shapes, tokenizer):
    long_question = " ".join(["word"] * 400)
    record = {
        "image": "images/a.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"},
            {"from": "gpt", "value": "a circle"},
            {"from": "human", "value": long_question},
            {"from": "gpt", "value": "a square"},
        ],
    }
    path = write_records(tmp_path, shapes, [good(0), record])
    short = view(tokenizer, max_length=64)  # the first question fits, the second leaves no answer
    with pytest.raises(DataError, match="record 1: too long"):
        LlavaDataset(path, {"student": short}, progress=False, split_turns=True)
    dataset = LlavaDataset(path, {"student": short}, progress=False, split_turns=True, skip_bad_records=True)
    assert len(dataset) == 1 and "1 skipped" in dataset.report()


def test_malformed_json_file_is_named(tmp_path, tokenizer):
    path = tmp_path / "broken.json"
    path.write_text('[{"id": 1,')
    with pytest.raises(DataError, match="broken.json: not valid JSON"):
        LlavaDataset(path, {"student": view(tokenizer)}, progress=False)


def test_corrupt_image_raises_or_is_skipped_and_counted(tmp_path, shapes, tokenizer):
    path = write_records(tmp_path, shapes, [good(0, "images/b.png"), good(1)])
    (tmp_path / "images" / "b.png").write_bytes(b"\x89PNG not really")
    dataset = LlavaDataset(path, {"student": view(tokenizer)}, progress=False)
    with pytest.raises(DataError, match=r"record 0: corrupt image .*b.png"):
        dataset[0]
    skipping = LlavaDataset(path, {"student": view(tokenizer)}, skip_bad_records=True, progress=False)
    assert torch.equal(skipping[0]["input_ids"], skipping[1]["input_ids"])  # replaced by the next record
    for _ in range(3):  # epochs: the bad record is met again, and still counts once
        [skipping[i] for i in range(len(skipping))]
    assert skipping.bad_images == 1 and "corrupt image: 1" in skipping.report()
    assert skipping.report().startswith("1 records used, 1 skipped")


def test_truncation_keeps_the_image_block_whole(tmp_path, shapes, tokenizer):
    long_answer = " ".join(["red circle"] * 60)
    record = {
        "image": "images/a.png",
        "conversations": [
            {"from": "human", "value": "<image>\nDescribe."},
            {"from": "gpt", "value": long_answer},
        ],
    }
    path = write_records(tmp_path, shapes, [record])
    item = LlavaDataset(path, {"student": view(tokenizer, max_length=40)}, progress=False)[0]
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert len(item["input_ids"]) == 40
    assert int((item["input_ids"] == image_id).sum()) == 4
    with pytest.raises(DataError, match="image tokens end beyond max_length=6"):
        LlavaDataset(path, {"student": view(tokenizer, max_length=6)}, progress=False)


def test_teacher_gets_its_own_view_when_it_sees_images_differently(shapes, tokenizer):
    views = {"student": view(tokenizer), "teacher": view(tokenizer, image_size=64)}
    dataset = LlavaDataset(shapes / "train.json", views, progress=False)
    item = next(dataset[i] for i in range(len(dataset)) if "pixel_values" in dataset[i])
    assert item["teacher_pixel_values"].shape[-1] == 64 and item["pixel_values"].shape[-1] == 32
    assert len(item["teacher_input_ids"]) == len(item["input_ids"]) + 16 - 4
    supervised = item["labels"][item["labels"] != -100]
    assert torch.equal(supervised, item["teacher_labels"][item["teacher_labels"] != -100])
    same = LlavaDataset(
        shapes / "train.json", {"student": view(tokenizer), "teacher": view(tokenizer)}, progress=False
    )
    assert not same.teacher_separate


def test_collator_pads_right_and_stacks_only_present_images(tokenizer):
    items = [
        {
            "input_ids": torch.tensor([1, 2, 3]),
            "labels": torch.tensor([-100, 2, 3]),
            "instruction_mask": torch.tensor([True, False, False]),
            "pixel_values": torch.zeros(3, 4, 4),
        },
        {
            "input_ids": torch.tensor([1, 2]),
            "labels": torch.tensor([-100, 2]),
            "instruction_mask": torch.tensor([True, False]),
        },
    ]
    batch = PaddingCollator(pad_token_id=0)(items)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [1, 2, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [-100, 2, -100]]
    assert batch["instruction_mask"].tolist() == [[True, False, False], [True, False, False]]
    assert batch["pixel_values"].shape == (1, 3, 4, 4)


def test_items_carry_an_instruction_mask_aligned_with_the_expanded_ids(tokenizer, shapes):
    dataset = LlavaDataset(shapes / "train.json", {"student": view(tokenizer)}, progress=False)
    item = dataset[0]
    ids, instruction = item["input_ids"], item["instruction_mask"]
    assert instruction.shape == ids.shape and instruction.dtype == torch.bool
    assert not instruction[ids == tokenizer.convert_tokens_to_ids("<image>")].any()
    first_question = dataset.examples[0]  # the record's first human turn is inside the mask
    assert instruction.any() and first_question[2].sum() == instruction.sum()
