"""`python -m export gguf`: the language model as GGUF gives transformers' greedy tokens in llama.cpp
(f32 file and cache), and llama.cpp's quantizer makes q8_0 / q4_k_m files that load and generate.
Needs llama-cpp-python (the export extra); skipped without it."""

import json

import pytest
import torch

from export.__main__ import main
from export.gguf_export import export_gguf
from export.onnx_export import ExportError
from tests.conftest import save_lively_model

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

PROMPTS = ["Describe the picture.", "What color is the circle in the top left corner?"]


def hf_greedy(model, tokenizer, ids, n):
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n, min_new_tokens=n)
    return out[0, len(ids) :].tolist()


def llama_greedy(path, ids, n, f32_cache=True):
    kwargs = {"type_k": 0, "type_v": 0} if f32_cache else {}  # GGML_TYPE_F32
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False, **kwargs)
    tokens = []
    for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
        tokens.append(token)
        if len(tokens) == n:
            break
    return tokens


@pytest.mark.parametrize("text_model_type", ["qwen2", "qwen3"])
def test_f32_gguf_gives_transformers_greedy_tokens(tokenizer, tmp_path, text_model_type):
    from distill.modeling import load_llava

    model_dir = save_lively_model(tokenizer, tmp_path / "student", seed=4, text_model_type=text_model_type)
    files = export_gguf(model_dir, tmp_path / "gguf", ["f32"])
    model, processor = load_llava(model_dir)
    model.generation_config.eos_token_id = None  # exactly n tokens on both sides
    for prompt in PROMPTS:
        text = processor.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = processor.tokenizer(text, add_special_tokens=False).input_ids
        assert llama_greedy(files["f32"], ids, 12) == hf_greedy(model, processor.tokenizer, ids, 12)


def test_quantized_files_load_and_generate(tokenizer, tmp_path, capsys):
    model_dir = save_lively_model(tokenizer, tmp_path / "student", seed=4)
    assert main(["gguf", "--model", str(model_dir), "--out", str(tmp_path / "gguf")]) == 0
    manifest = json.loads((tmp_path / "gguf" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"f16", "q8_0", "q4_k_m"}
    for name in manifest["files"].values():
        assert len(llama_greedy(tmp_path / "gguf" / name, [1, 2, 3], 4, f32_cache=False)) == 4
    reader = gguf.GGUFReader(str(tmp_path / "gguf" / manifest["files"]["f16"]))
    assert reader.fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    assert "mmproj" in capsys.readouterr().out


def test_unknown_type_is_refused_before_anything_is_written(student_dir, tmp_path):
    with pytest.raises(ExportError, match="unknown GGUF type"):
        export_gguf(student_dir, tmp_path / "gguf", ["q3_x"])
    assert not (tmp_path / "gguf").exists()


def test_bench_times_gguf_files_beside_pytorch_on_a_text_prompt(shapes, student_dir, tmp_path, capsys):
    export_gguf(student_dir, tmp_path / "gguf", ["f16", "q8_0"])
    args = [
        "bench",
        "--model",
        str(student_dir),
        "--export",
        str(tmp_path / "gguf"),
        "--data",
        str(shapes / "test.json"),
    ]
    assert main([*args, "--new-tokens", "3", "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    assert "text only: a GGUF export is compared" in printed
    assert "| gguf f16 (gguf) |" in printed and "| gguf q8_0 (gguf) |" in printed
