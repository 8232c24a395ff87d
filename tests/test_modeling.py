"""The model format: build, save, load, check, freeze; and the teacher/student pair checks."""

import json
import shutil

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPVisionConfig, LlavaConfig, Qwen2Config

from distill.modeling import (
    ModelFormatError,
    image_token_count,
    language_model_parameters,
    load_llava,
    save_llava,
    set_trainable,
)
from distill.pairing import PairError, check_pair
from distill.tokenizer import CHATML_TEMPLATE
from tests.conftest import make_model


def generate(model, processor, image):
    text = processor.apply_chat_template(
        [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": "What color is the circle?"}],
            }
        ],
        add_generation_prompt=True,
    )
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    return model.generate(**inputs, max_new_tokens=5, do_sample=False)


@pytest.mark.parametrize("text_model_type", ["qwen2", "qwen3", "llama"])
def test_saved_model_loads_and_generates_the_same(tmp_path, tokenizer, shapes, text_model_type):
    model, processor = make_model(tokenizer, text_model_type=text_model_type)
    save_llava(model, processor, tmp_path / "m")
    loaded, loaded_processor = load_llava(tmp_path / "m")
    image = Image.open(shapes / "images" / "test" / "000000.png").convert("RGB")
    assert torch.equal(generate(model, processor, image), generate(loaded, loaded_processor, image))
    assert loaded.config.text_config.model_type == text_model_type


def test_siglip_pooling_head_is_kept_on_disk_but_not_run(tmp_path, tokenizer, shapes):
    model, processor = make_model(tokenizer)
    save_llava(model, processor, tmp_path / "m")
    loaded, loaded_processor = load_llava(tmp_path / "m")
    tower = loaded.model.vision_tower
    assert {"head.probe", "head.mlp.fc1.weight"} <= set(tower.state_dict())  # saved and loaded as before
    runs = []
    tower.head.register_forward_hook(lambda *args: runs.append(1))
    image = Image.open(shapes / "images" / "test" / "000000.png").convert("RGB")
    pixels = loaded_processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        skipped = loaded.model.get_image_features(pixel_values=pixels).pooler_output[0]
        tower.use_head = True
        computed = loaded.model.get_image_features(pixel_values=pixels).pooler_output[0]
    assert runs == [1]  # only the call with the head switched back on ran it
    assert torch.equal(skipped, computed)  # and LLaVA's image features never depended on it


def test_save_is_atomic_and_replaces(tmp_path, tokenizer, monkeypatch):
    model, processor = make_model(tokenizer)
    save_llava(model, processor, tmp_path / "m")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(processor, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        save_llava(model, processor, tmp_path / "m")
    assert (tmp_path / "m" / "config.json").is_file()  # the previous save is intact
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # and no partial folder is left


def test_loading_refuses_other_architectures_and_missing_processors(tmp_path, student_dir):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelFormatError, match="unsupported architecture 'bert'"):
        load_llava(tmp_path / "bert")
    with pytest.raises(ModelFormatError, match="no config.json"):
        load_llava(tmp_path)
    bare = tmp_path / "bare"
    shutil.copytree(student_dir, bare)
    (bare / "processor_config.json").unlink()
    with pytest.raises(ModelFormatError, match="no processor saved"):
        load_llava(bare)


def test_set_trainable_freezes_all_but_the_named_modules(tokenizer):
    model, _ = make_model(tokenizer)
    counts = set_trainable(model, ["projector"])
    projector = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    assert counts["trainable"] == projector
    assert not any(p.requires_grad for p in model.model.language_model.parameters())
    set_trainable(model, ["projector", "language_model"])
    assert model.lm_head.weight.requires_grad
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())


def test_language_model_parameters_count_tied_weights_once(tokenizer):
    model, _ = make_model(tokenizer)
    lm = sum(p.numel() for p in model.model.language_model.parameters())
    assert language_model_parameters(model) == lm  # the LM head is the input embedding


def test_vocab_size_pads_the_embedding_beyond_the_tokenizer(tokenizer):
    model, _ = make_model(tokenizer, vocab_size=len(tokenizer) + 37)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) + 37
    assert model.config.text_config.vocab_size == len(tokenizer) + 37
    with pytest.raises(ModelFormatError, match=r"vocab_size \(10\) is smaller than the tokenizer"):
        make_model(tokenizer, vocab_size=10)


def test_image_token_count_follows_the_vision_tower():
    clip = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=336, patch_size=14),
        text_config=Qwen2Config(),
        vision_feature_select_strategy="default",
    )
    assert image_token_count(clip) == 576  # LLaVA-1.5: 24x24 patches, CLS dropped
    clip.vision_feature_select_strategy = "full"
    assert image_token_count(clip) == 577


def test_pair_check_accepts_a_matching_pair(tokenizer):
    student, sp = make_model(tokenizer)
    teacher, tp = make_model(tokenizer, hidden_size=48, image_size=64)
    report = check_pair(student.config, sp, teacher.config, tp)
    assert report.vocab_size == len(tokenizer)
    assert (report.student_visual_tokens, report.teacher_visual_tokens) == (4, 16)
    assert not report.same_visual_tokens
    assert "IVA needs them equal" in report.lines()[1]


def test_pair_check_names_a_vocabulary_difference(tokenizer):
    student, sp = make_model(tokenizer)
    teacher, tp = make_model(tokenizer)
    tp.tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    tp.tokenizer.add_tokens(["<extra>"])
    with pytest.raises(PairError, match=r"vocabularies differ .*'<extra>'"):
        check_pair(student.config, sp, teacher.config, tp)


def test_pair_check_names_a_template_difference(tokenizer):
    student, sp = make_model(tokenizer)
    teacher, tp = make_model(tokenizer)
    tp.tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    tp.tokenizer.chat_template = CHATML_TEMPLATE.replace("<|im_start|>", "[INST]")
    with pytest.raises(PairError, match="chat templates differ"):
        check_pair(student.config, sp, teacher.config, tp)
