"""Chat templates that read contents as strings and as typed parts (distill/chat_template.py), and a
checkpoint in llava-hf's layout (LLaVA-1.5's template on the processor alone, CLIP's crop) through
loading, training data, prompts, the serving engine and the API."""

import copy
import shutil

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from distill.chat_template import ChatTemplateError, render_chat, template_kind, to_parts
from distill.conversation import (
    IGNORE_INDEX,
    ConversationEncoder,
    encode_instruction_prompt,
    expand_image_tokens,
    generation_prompt,
    prompt_inputs,
    reply_stop_warning,
)
from distill.modeling import load_llava, load_processor
from serve.app import Settings, create_app
from serve.engines import open_engine
from serve.sampling import Sampler
from tests.conftest import LLAVA_15_TEMPLATE, LLAVA_QWEN_TEMPLATE
from tests.test_serve import data_url, image_message

QUESTION = "What color is the circle?"
TWO_TURNS = [
    {"from": "human", "value": f"<image>\n{QUESTION}"},
    {"from": "gpt", "value": "red"},
    {"from": "human", "value": "Where is it?"},
    {"from": "gpt", "value": "top left"},
]


def with_template(tokenizer, template):
    copied = copy.deepcopy(tokenizer)
    copied.chat_template = template
    return copied


def test_a_string_content_splits_at_each_image_into_parts():
    assert to_parts("<image>\nWhat color?", "<image>") == [
        {"type": "image"},
        {"type": "text", "text": "What color?"},
    ]
    assert to_parts("Compare <image> with <image>.", "<image>") == [
        {"type": "text", "text": "Compare"},
        {"type": "image"},
        {"type": "text", "text": "with"},
        {"type": "image"},
        {"type": "text", "text": "."},
    ]
    assert to_parts("  keeps its own spaces ", "<image>") == [
        {"type": "text", "text": "  keeps its own spaces "}
    ]
    assert to_parts("", "<image>") == [{"type": "text", "text": ""}]
    assert to_parts("<image>", "<image>") == [{"type": "image"}]


def test_each_template_gets_the_messages_it_reads(tokenizer):
    messages = [{"role": "user", "content": f"<image>\n{QUESTION}"}]
    chatml = render_chat(tokenizer, messages, add_generation_prompt=True)
    assert chatml == f"<|im_start|>user\n<image>\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    llava = render_chat(with_template(tokenizer, LLAVA_15_TEMPLATE), messages, add_generation_prompt=True)
    assert llava == f"USER: <image>\n{QUESTION} ASSISTANT:"
    # given the string itself, LLaVA-1.5's template drops the question and the image without an error
    plain = with_template(tokenizer, LLAVA_15_TEMPLATE)
    assert (
        plain.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == "USER: ASSISTANT:"
    )


def test_a_template_that_shows_no_text_either_way_is_refused(tokenizer):
    silent = with_template(tokenizer, "{% for m in messages %}{{ m['role'] }}: {% endfor %}")
    with pytest.raises(ChatTemplateError, match="neither from a string content nor"):
        render_chat(silent, [{"role": "user", "content": QUESTION}], add_generation_prompt=True)
    with pytest.raises(ChatTemplateError, match="no chat template"):
        render_chat(with_template(tokenizer, None), [{"role": "user", "content": QUESTION}], True)
    calls = []

    def render(messages):
        calls.append(messages)
        return str(messages)

    template = "a template seen once"
    assert template_kind(template, render) == template_kind(template, render) == "string"
    assert len(calls) == 1  # the probe runs once per template


def test_llava_hf_layout_loads_with_the_processors_template_and_clips_crop(llava_hf_dir, shapes):
    model, processor = load_llava(llava_hf_dir)
    assert processor.tokenizer.chat_template == LLAVA_15_TEMPLATE
    prompt = generation_prompt(processor.tokenizer, f"<image>\n{QUESTION}")
    assert prompt == f"USER: <image>\n{QUESTION} ASSISTANT:"
    wide = Image.new("RGB", (90, 30), "white")  # resized on its short side, then cropped square
    inputs = processor(images=[wide], text=[prompt], return_tensors="pt")
    assert inputs["pixel_values"].shape[-2:] == (32, 32)
    visual = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert visual == 4  # 2 x 2 patches, CLIP's class token dropped at layer -2 ("default")
    assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


def test_llava_15_template_supervises_exactly_the_replies(llava_hf_dir):
    _, processor = load_llava(llava_hf_dir)
    tokenizer = processor.tokenizer
    encoder = ConversationEncoder(tokenizer)
    ids, labels = encoder.encode(TWO_TURNS)
    assert (
        tokenizer.decode(ids.tolist())
        == f"USER: <image>\n{QUESTION} ASSISTANT: red USER: Where is it? ASSISTANT: top left "
    )
    supervised = [int(i) for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(supervised).split() == ["red", "top", "left"]
    again, _ = encoder.encode(TWO_TURNS)  # the second one of these roles takes the template skeleton
    assert again.tolist() == ids.tolist()


def test_a_generation_prompt_unlike_the_header_before_a_reply_still_supervises_the_replies(tokenizer):
    tokenizer = with_template(tokenizer, LLAVA_QWEN_TEMPLATE)
    encoder = ConversationEncoder(tokenizer)
    for _ in range(2):  # the exact spans, then the template skeleton's
        ids, labels = encoder.encode(TWO_TURNS)
        assert tokenizer.decode(ids.tolist()) == (
            f"<|im_start|>user <image>\n{QUESTION}<|im_end|><|im_start|>assistant \nred<|im_end|>"
            "<|im_start|>user \nWhere is it?<|im_end|><|im_start|>assistant \ntop left<|im_end|>"
        )
        supervised = [int(i) for i, label in zip(ids, labels) if label != IGNORE_INDEX]
        assert tokenizer.decode(supervised) == "red<|im_end|>top left<|im_end|>"
    assert encoder.skeletons.skeletons[("user", "assistant", "user", "assistant")] is not None
    prompt = generation_prompt(tokenizer, f"<image>\n{QUESTION}")
    assert prompt == f"<|im_start|>user <image>\n{QUESTION}<|im_end|><|im_start|>assistant\n"


def test_the_serving_engine_and_the_api_prompt_a_llava_hf_checkpoint(llava_hf_dir, shapes):
    engine = open_engine(llava_hf_dir)
    picture = Image.open(next((shapes / "images" / "test").glob("*.png"))).convert("RGB")
    prompt = engine.prompt([{"role": "user", "content": f"<image>\n{QUESTION}"}], [picture])
    assert prompt.text == f"USER: <image>\n{QUESTION} ASSISTANT:"
    expanded = engine.processor(images=[picture], text=[prompt.text], return_tensors="pt")["input_ids"]
    assert prompt.tokens == expanded.shape[1]  # the usage count is what the model receives
    assert len(list(engine.stream(prompt, Sampler(0.0), 3))) >= 1
    client = TestClient(create_app(engine, Settings()))
    reply = client.post(
        "/v1/chat/completions",
        json={"messages": [image_message(data_url(picture))], "max_tokens": 3, "temperature": 0},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["prompt_tokens"] == expanded.shape[1]


BOS = "<|endoftext|>"
BOS_WRITING_TEMPLATE = (  # Llama-3's way: the template writes the bos token itself
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def bos_checkpoints(student_dir, tmp_path_factory):
    """The student with a tokenizer whose post-processor adds a bos token (as Llama's do), under a
    template that writes the bos itself and under one that does not (the kit's ChatML)."""
    from tokenizers.processors import TemplateProcessing

    root = tmp_path_factory.mktemp("bos")
    folders = {}
    for name, template in (("template-writes-bos", BOS_WRITING_TEMPLATE), ("template-without-bos", None)):
        folder = shutil.copytree(student_dir, root / name)
        processor = load_processor(folder)
        tokenizer = processor.tokenizer
        bos_id = tokenizer.convert_tokens_to_ids(BOS)
        tokenizer._tokenizer.post_processor = TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
        )
        tokenizer.bos_token = BOS
        if template:
            tokenizer.chat_template = processor.chat_template = template
        processor.save_pretrained(folder)
        assert load_processor(folder).tokenizer("a").input_ids[0] == bos_id  # it does add one
        folders[name] = folder
    return folders


@pytest.mark.parametrize("name", ["template-writes-bos", "template-without-bos"])
def test_every_runtime_prompts_with_the_one_bos_training_gives(name, bos_checkpoints, shapes, tmp_path):
    from export.onnx_export import export_onnx

    folder = bos_checkpoints[name]
    picture = Image.open(next((shapes / "images" / "test").glob("*.png"))).convert("RGB")
    content = f"<image>\n{QUESTION}"
    engine = open_engine(folder)
    tokenizer, config = engine.processor.tokenizer, engine.model.config
    trained, _ = encode_instruction_prompt(ConversationEncoder(tokenizer), content)
    assert trained[0] == tokenizer.bos_token_id != trained[1]  # training: one bos, first
    ids, _ = expand_image_tokens(trained, trained.copy(), config.image_token_id, engine.chat.image_tokens())
    pixels = engine.processor.image_processor(images=[picture], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        reference = engine.model(input_ids=torch.tensor(ids[None]), pixel_values=pixels).logits[0, -1].numpy()
    messages = [{"role": "user", "content": content}]
    engines = [engine]
    if name == "template-writes-bos":  # and the ONNX export reads the same prompt
        engines.append(open_engine(export_onnx(folder, tmp_path / "onnx")))
    for each in engines:
        prompt = each.prompt(messages, [picture])
        assert prompt.tokens == len(ids), each.backend
        np.testing.assert_allclose(each.start(prompt, 1), reference, atol=1e-4, err_msg=each.backend)
    heldout_inputs = prompt_inputs(engine.processor, [picture], [generation_prompt(tokenizer, content)])
    assert heldout_inputs["input_ids"][0].tolist() == ids.tolist()  # eval and held-out answers too


def test_a_template_that_ends_replies_without_the_eos_is_warned_of(tokenizer, llava_hf_dir, capsys):
    from distill.__main__ import main

    assert reply_stop_warning(tokenizer) is None  # ChatML: 'a<|im_end|>' is supervised
    assert reply_stop_warning(with_template(tokenizer, LLAVA_QWEN_TEMPLATE)) is None
    base = copy.deepcopy(tokenizer)  # Qwen2's base tokenizers: eos <|endoftext|>, replies end in <|im_end|>
    base.eos_token = "<|endoftext|>"
    assert reply_stop_warning(base) is None  # generation stops at <|im_end|> too
    warning = reply_stop_warning(with_template(tokenizer, LLAVA_15_TEMPLATE))
    assert "without the end-of-sequence token '<|im_end|>'" in warning and "does not learn to stop" in warning
    assert main(["check", "--student", str(llava_hf_dir)]) == 0  # a warning, not a refusal
    assert "does not learn to stop" in capsys.readouterr().out
