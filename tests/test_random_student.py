"""`python -m distill random-student`: a random-weight checkpoint of a named shape that loads and answers."""

import json

from distill.__main__ import main
from distill.bench_scale import LLM_SHAPES
from distill.modeling import load_llava


def test_random_student_has_the_named_shape_and_a_padded_lm_head(shapes, tmp_path, capsys):
    out = tmp_path / "random"
    args = ["random-student", "--llm", "tiny", "--vision", "tiny", "--vocab", "1024"]
    assert main([*args, "--tokenizer", str(shapes / "tokenizer"), "--out", str(out)]) == 0
    assert "random tiny + tiny" in capsys.readouterr().out
    text = json.loads((out / "config.json").read_text())["text_config"]
    assert text["hidden_size"] == LLM_SHAPES["tiny"]["hidden_size"] and text["vocab_size"] == 1024
    model, processor = load_llava(out)
    assert model.lm_head.weight.shape[0] == 1024 and len(processor.tokenizer) < 1024


def test_a_bfloat16_random_student_is_built_and_saved_in_bfloat16(shapes, tmp_path):
    import torch

    out = tmp_path / "random-bf16"
    args = ["random-student", "--llm", "tiny", "--vision", "tiny", "--vocab", "1024", "--dtype", "bfloat16"]
    assert main([*args, "--tokenizer", str(shapes / "tokenizer"), "--out", str(out)]) == 0
    assert torch.get_default_dtype() == torch.float32  # restored after the build
    model, _ = load_llava(out, "auto")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_llava_1_5_shape_names_a_clip_tower_read_at_layer_minus_two_and_a_llama(shapes, tmp_path):
    """The serving bench's baseline shape, checked small: the same family switches on the tiny sizes."""
    from distill.bench_scale import LLM_SHAPES, VISION_SHAPES, arch_of
    from distill.modeling import build_llava, image_token_count

    assert (
        LLM_SHAPES["llama2-7b"]["text_model_type"] == "llama"
        and VISION_SHAPES["clip-l-336"]["image_size"] == 336
    )
    arch = arch_of("llama2-7b", "clip-l-336", 32064)
    assert arch.tie_word_embeddings is False and arch.vision_model_type == "clip"
    from dataclasses import replace

    from transformers import AutoTokenizer

    from distill.modeling import save_llava

    small = replace(
        arch,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        intermediate_size=64,
        vision_hidden_size=32,
        vision_layers=2,
        vision_heads=2,
        vision_intermediate_size=64,
        image_size=28,
        vocab_size=0,
    )
    model, processor = build_llava(small, AutoTokenizer.from_pretrained(shapes / "tokenizer"))
    assert model.config.vision_config.model_type == "clip_vision_model"
    assert (
        model.config.vision_feature_layer == -2 and model.config.vision_feature_select_strategy == "default"
    )
    assert image_token_count(model.config) == 4  # 2 x 2 patches; the class token is dropped
    loaded, loaded_processor = load_llava(save_llava(model, processor, tmp_path / "clip"))
    from PIL import Image

    text = loaded_processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "<image>\nWhat?"}], tokenize=False, add_generation_prompt=True
    )
    inputs = loaded_processor(images=[Image.new("RGB", (40, 40), "red")], text=[text], return_tensors="pt")
    assert int((inputs["input_ids"] == loaded.config.image_token_id).sum()) == 4
    assert (
        loaded.generate(**inputs, max_new_tokens=2, do_sample=False).shape[1] > inputs["input_ids"].shape[1]
    )
