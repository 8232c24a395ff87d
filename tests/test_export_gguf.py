"""`python -m export gguf`: the language model + mmproj as GGUF give transformers' greedy tokens in llama.cpp
(f32 files and cache; image + text and text-only prompts; Qwen2 and Qwen3), the mmproj's image embeddings
equal transformers' get_image_features within f16 rounding, llama-cpp-python's multimodal chat handler
answers from the files, llama.cpp's quantizer makes q8_0 / q4_k_m files that load and generate in a
fresh process (a non-portable llama.cpp build dies there with SIGILL), bad input is refused before
anything is written. Needs llama-cpp-python (the gguf extra); skipped without it."""

import base64
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from eval.backends import TorchBackend
from export.__main__ import main
from export.check import torch_greedy, torch_prompt_logits
from export.gguf_export import default_mmproj_type, export_gguf, image_features
from export.gguf_runner import GgufLlava
from export.onnx_export import ExportError
from tests.conftest import save_lively_model
from tests.test_export_onnx import prompts

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")


@pytest.mark.parametrize("text_model_type", ["qwen2", "qwen3"])
def test_f32_gguf_gives_transformers_logits_and_greedy_tokens(shapes, tokenizer, tmp_path, text_model_type):
    model_dir = save_lively_model(tokenizer, tmp_path / "student", seed=4, text_model_type=text_model_type)
    files = export_gguf(model_dir, tmp_path / "gguf", ["f32"])
    assert set(files) == {"f32"}
    backend, runner = TorchBackend(model_dir), GgufLlava(tmp_path / "gguf", "f32", f32_cache=True)
    images, texts = prompts(shapes, backend)
    reference, _ = torch_prompt_logits(backend.model, backend.processor, images, texts)
    for row, (image, text) in enumerate(zip(images, texts)):
        last = runner.prompt_pass(image, text)
        assert abs(last - reference[row, -1]).max() < 2e-2  # the projector's GELU: tanh form in llama.cpp
    expected = torch_greedy(backend.model, backend.processor, images, texts, 12)
    assert runner.generate(images, texts, 12, ignore_eos=True) == expected
    assert len({tuple(t) for t in expected}) == len(expected)  # the prompts really differ


def test_mmproj_image_embeddings_equal_get_image_features(shapes, tokenizer, tmp_path):
    model_dir = save_lively_model(tokenizer, tmp_path / "student", seed=4)
    export_gguf(model_dir, tmp_path / "gguf", ["f16"])
    manifest = json.loads((tmp_path / "gguf" / "manifest.json").read_text())
    assert manifest["vision"] == "mmproj-f16.gguf"
    reader = gguf.GGUFReader(str(tmp_path / "gguf" / "mmproj-f16.gguf"))
    assert reader.fields["general.architecture"].contents() == "clip"
    assert reader.fields["clip.projector_type"].contents() == "mlp"
    assert reader.fields["clip.use_gelu"].contents() is True
    names = {t.name for t in reader.tensors}
    assert {"mm.0.weight", "mm.2.weight", "v.patch_embd.weight", "v.blk.0.ffn_down.weight"} <= names
    assert not any("post_ln" in n for n in names)  # LLaVA reads the tower before its post-layernorm
    backend, runner = TorchBackend(model_dir), GgufLlava(tmp_path / "gguf", "f16")
    images, _ = prompts(shapes, backend)
    for image in images[:2]:
        embeddings = runner.image_embeddings(image)
        reference = image_features(backend.model, backend.processor, image).reshape(embeddings.shape)
        scale = np.abs(reference).max()
        assert np.abs(embeddings - reference).max() < 1e-2 * scale  # f16 weights, f16 rounding


def test_q8_0_mmproj_is_smaller_still_verified_and_the_default_beside_quantized_files_only(
    student_dir, tmp_path, capsys
):
    args = ["gguf", "--model", str(student_dir), "--quant", "q8_0"]
    assert main([*args, "--out", str(tmp_path / "q8")]) == 0  # every file quantized: q8_0 vision
    assert main([*args, "--mmproj-type", "f16", "--out", str(tmp_path / "f16")]) == 0
    assert "mmproj-q8_0.gguf" in capsys.readouterr().out
    assert default_mmproj_type(["q4_k_m", "q8_0"]) == "q8_0"
    assert default_mmproj_type(["f16", "q4_k_m"]) == "f16" and default_mmproj_type(["f32", "q8_0"]) == "f32"
    manifest = json.loads((tmp_path / "q8" / "manifest.json").read_text())
    assert manifest["vision"] == "mmproj-q8_0.gguf" and 0 < manifest["vision_relative_error"] < 0.05
    reader = gguf.GGUFReader(str(tmp_path / "q8" / "mmproj-q8_0.gguf"))
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert kinds["mm.0.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert kinds["v.patch_embd.weight"] == gguf.GGMLQuantizationType.F16
    f16 = gguf.GGUFReader(str(tmp_path / "f16" / "mmproj-f16.gguf"))
    nbytes = [{t.name: t.n_bytes for t in r.tensors}["mm.0.weight"] for r in (reader, f16)]
    assert nbytes[0] < 0.6 * nbytes[1]  # 34 bytes per 32 weights against 64
    with pytest.raises(ExportError, match="unknown mmproj type 'q4'"):
        export_gguf(student_dir, tmp_path / "bad", ["q8_0"], "q4")
    assert not (tmp_path / "bad").exists()


def test_embedding_type_quantizes_the_token_embeddings_and_the_bench_names_it(
    shapes, student_dir, tmp_path, capsys
):
    args = ["gguf", "--model", str(student_dir), "--quant", "q4_k_m"]
    assert main([*args, "--out", str(tmp_path / "default")]) == 0
    assert main([*args, "--embedding-type", "q4_0", "--out", str(tmp_path / "q4emb")]) == 0
    kinds = {}
    for folder in ("default", "q4emb"):
        reader = gguf.GGUFReader(str(tmp_path / folder / "model-q4_k_m.gguf"))
        kinds[folder] = {t.name: t.tensor_type for t in reader.tensors}
    assert kinds["q4emb"]["token_embd.weight"] == gguf.GGMLQuantizationType.Q4_0
    assert kinds["default"]["token_embd.weight"] != gguf.GGMLQuantizationType.Q4_0
    if "output.weight" in kinds["q4emb"]:  # an untied LM head follows the same type
        assert kinds["q4emb"]["output.weight"] == gguf.GGMLQuantizationType.Q4_0
    sizes = [(tmp_path / f / "model-q4_k_m.gguf").stat().st_size for f in ("q4emb", "default")]
    assert sizes[0] < sizes[1]
    manifest = json.loads((tmp_path / "q4emb" / "manifest.json").read_text())
    assert manifest["embedding_type"] == "q4_0"
    runner = GgufLlava(tmp_path / "q4emb", "q4_k_m", use_gpu=False)
    assert len(runner.generate([None], ["red"], 4, ignore_eos=True)[0]) == 4
    bench = ["bench", "--model", str(student_dir), "--export", str(tmp_path / "q4emb")]
    assert main([*bench, "--data", str(shapes / "test.json"), "--new-tokens", "2", "--repeats", "1"]) == 0
    assert "| gguf q4_k_m, embeddings q4_0, vision q8_0 (q4emb) |" in capsys.readouterr().out
    with pytest.raises(ExportError, match="applies to quantized files"):
        export_gguf(student_dir, tmp_path / "bad", ["f16"], embedding_type="q4_0")
    with pytest.raises(ExportError, match="unknown embedding type 'q3'"):
        export_gguf(student_dir, tmp_path / "bad", ["q4_k_m"], embedding_type="q3")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("tower", ["clip", "siglip"])
def test_mmproj_of_a_clip_tower_and_a_square_ffn(tmp_path, tokenizer, tower):
    """A tower whose FFN is square, where llama.cpp's legacy up/down swap fires, read at its second-to-last
    layer (LLaVA-1.5's choice); and LLaVA-1.5's CLIP tower, which the installed llama.cpp computes wrongly
    (ggml-org/llama.cpp#25814): the export's own probe catches that and writes nothing."""
    from PIL import Image
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    from tests.test_build_student import VISION, build_student, save_llm

    torch.manual_seed(0)
    config = {**VISION, "num_hidden_layers": 2, "intermediate_size": VISION["hidden_size"]}
    vision = (
        CLIPVisionModel(CLIPVisionConfig(**config))
        if tower == "clip"
        else SiglipVisionModel(SiglipVisionConfig(**config))
    )
    vision.save_pretrained(tmp_path / tower)
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    SiglipImageProcessorPil(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(tmp_path / tower)
    llm_path, _ = save_llm(tmp_path, tokenizer)
    strategy = "default" if tower == "clip" else "full"
    options = ["--strategy", strategy, "--feature-layer", "-2"]
    model, processor = build_student(tmp_path / tower, llm_path, tmp_path / "student", *options)
    if tower == "clip":
        with pytest.raises(ExportError, match="llama.cpp#25814"):
            export_gguf(tmp_path / "student", tmp_path / "gguf", ["f32"])
        assert not (tmp_path / "gguf").exists()
        return
    export_gguf(tmp_path / "student", tmp_path / "gguf", ["f32"])
    runner = GgufLlava(tmp_path / "gguf", "f32")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    embeddings = runner.image_embeddings(image)
    assert embeddings.shape == (4, model.config.get_text_config().hidden_size)
    assert np.abs(embeddings - image_features(model, processor, image).reshape(embeddings.shape)).max() < 2e-3


def test_llama_cpp_python_chat_handler_answers_from_the_files(shapes, tokenizer, tmp_path):
    model_dir = save_lively_model(tokenizer, tmp_path / "student", seed=4)
    export_gguf(model_dir, tmp_path / "gguf", ["f32"])
    runner = GgufLlava(tmp_path / "gguf", "f32", f32_cache=True)
    llm = llama_cpp.Llama(
        str(tmp_path / "gguf" / "model-f32.gguf"),
        n_ctx=0,
        type_k=0,
        type_v=0,
        verbose=False,
        chat_handler=runner.chat_handler(),
    )
    backend = TorchBackend(model_dir)
    images, texts = prompts(shapes, backend)
    buffer = io.BytesIO()
    images[0].save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    question = texts[0].split("<image>\n", 1)[1].split("<|im_end|>", 1)[0]
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]
    reply = llm.create_chat_completion(
        messages=[{"role": "user", "content": content}],
        temperature=0.0,
        top_k=1,
        repeat_penalty=1.0,
        max_tokens=8,
    )
    content, expected = (
        reply["choices"][0]["message"]["content"].strip(),
        runner.answer(images[:1], texts[:1], 8)[0],
    )
    if expected.endswith("\ufffd"):
        # the 8th token ends inside a UTF-8 character: llama-cpp-python then generates past max_tokens
        # until the text ends in a whole one (Llama._create_completion's multibyte_fix) and drops bytes
        # that never make one (errors="ignore"), where the runner's decode writes U+FFFD
        longer = runner.answer(images[:1], texts[:1], 16)[0].replace("\ufffd", "")
        assert content.startswith(expected.replace("\ufffd", "")) and longer.startswith(content)
    else:
        assert content == expected


QUANTIZED_RUN = """
import sys
from export.gguf_runner import GgufLlava
from PIL import Image
runner = GgufLlava(sys.argv[1], sys.argv[2])
text = runner.processor.tokenizer.apply_chat_template(
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is there?"}]}],
    tokenize=False, add_generation_prompt=True)
print(len(runner.generate_one(Image.new("RGB", (64, 64), "red"), text, 4, ignore_eos=True)))
"""


def test_quantized_files_load_and_generate_in_a_fresh_process(tokenizer, tmp_path, capsys):
    model_dir = save_lively_model(tokenizer, tmp_path / "student", seed=4)
    assert main(["gguf", "--model", str(model_dir), "--out", str(tmp_path / "gguf")]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((tmp_path / "gguf" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"f16", "q8_0", "q4_k_m"} and "mmproj-f16.gguf" in printed
    for name in manifest["files"]:
        done = subprocess.run(
            [sys.executable, "-c", QUANTIZED_RUN, str(tmp_path / "gguf"), name],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, (
            f"{name} died with status {done.returncode} (-4 is SIGILL: llama-cpp-python built with -march=native "
            f"on a CPU that advertises AMX; rebuild it with the CMAKE_ARGS in the README)\n{done.stderr[-2000:]}"
        )
        assert done.stdout.strip().endswith("4")
    reader = gguf.GGUFReader(str(tmp_path / "gguf" / manifest["files"]["f16"]))
    assert reader.fields["tokenizer.chat_template"].contents() == tokenizer.chat_template


def test_bad_input_is_refused_before_anything_is_written(student_dir, tmp_path):
    with pytest.raises(ExportError, match="unknown GGUF type"):
        export_gguf(student_dir, tmp_path / "gguf", ["q3_x"])
    assert not (tmp_path / "gguf").exists()
    config = json.loads((student_dir / "config.json").read_text())
    config["vision_feature_select_strategy"] = "default"  # SigLIP has no class token for llama.cpp to drop
    edited = tmp_path / "edited"
    edited.mkdir()
    for path in student_dir.iterdir():
        (edited / path.name).write_bytes(path.read_bytes())
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="SigLIP tower with the 'full' strategy"):
        export_gguf(edited, tmp_path / "gguf", ["f16"])
    assert not (tmp_path / "gguf").exists()


def test_bench_times_gguf_files_beside_pytorch_on_image_prompts(shapes, student_dir, tmp_path, capsys):
    export_gguf(student_dir, tmp_path / "gguf", ["f16", "q8_0"])
    args = [
        "bench",
        "--model",
        str(student_dir),
        "--export",
        str(tmp_path / "gguf"),
        "--out",
        str(tmp_path / "b.json"),
    ]
    assert (
        main(
            [
                *args,
                "--data",
                str(shapes / "test.json"),
                "--new-tokens",
                "3",
                "--repeats",
                "1",
                "--sequential",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "text only" not in printed and "one format after another" in printed
    assert "| gguf f16 (gguf) |" in printed and "| gguf q8_0 (gguf) |" in printed
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    # llama.cpp's process holds llama-cpp-python, numpy and Pillow, as a deployment would: no torch
    assert rows["pytorch fp32"]["torch_imported"] is True
    assert rows["gguf f16 (gguf)"]["torch_imported"] is False
    assert rows["gguf f16 (gguf)"]["peak_rss_mib"] < rows["pytorch fp32"]["peak_rss_mib"]


def test_the_runner_reads_its_stop_tokens_and_image_text_without_transformers(tmp_path):
    from export.gguf_runner import end_of_sequence_ids, image_text

    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [3, 7]}))
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_token": "<img>"}))
    assert end_of_sequence_ids(tmp_path) == {3, 7} and image_text(tmp_path) == "<img>"
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 5}))
    assert end_of_sequence_ids(tmp_path) == {5}
    (tmp_path / "generation_config.json").write_text(json.dumps({}))
    with pytest.raises(ValueError, match="no eos_token_id"):
        end_of_sequence_ids(tmp_path)
    (tmp_path / "generation_config.json").unlink()
    (tmp_path / "processor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no generation_config.json"):
        end_of_sequence_ids(tmp_path)
    with pytest.raises(FileNotFoundError, match="no processor_config.json"):
        image_text(tmp_path)


def test_check_compares_gguf_files_with_pytorch(shapes, student_dir, tmp_path, capsys):
    export_gguf(student_dir, tmp_path / "gguf", ["f16", "q4_k_m"])
    args = ["check", "--model", str(student_dir), "--export", str(tmp_path / "gguf")]
    assert main([*args, "--data", str(shapes / "test.json"), "--prompts", "3", "--per-family", "2"]) == 0
    printed = capsys.readouterr().out
    assert "| gguf f16 (gguf) |" in printed and "| gguf q4_k_m (gguf) |" in printed


def test_both_float_files_when_both_are_asked_and_the_context_is_enforced(student_dir, tmp_path):
    files = export_gguf(student_dir, tmp_path / "gguf", ["f32", "q8_0", "f16"])
    assert sorted(files) == ["f16", "f32", "q8_0"] and all(path.is_file() for path in files.values())
    manifest = json.loads((tmp_path / "gguf" / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["f16", "f32", "q8_0"]
    runner = GgufLlava(tmp_path / "gguf", "q8_0", use_gpu=False)
    with pytest.raises(ValueError, match="the model's context is 512"):
        runner.prompt_pass(None, "red " * 600)


def test_a_sentencepiece_style_tokenizer_is_refused_for_gguf():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from export.gguf_text import check_byte_level_bpe

    vocab = {"<unk>": 0, "▁": 1, "a": 2, "▁a": 3}
    spm = Tokenizer(models.BPE(vocab, [("▁", "a")], unk_token="<unk>", byte_fallback=True))
    spm.pre_tokenizer = pre_tokenizers.Metaspace()
    spm.decoder = decoders.Metaspace()
    with pytest.raises(ValueError, match="SentencePiece-style"):
        check_byte_level_bpe(PreTrainedTokenizerFast(tokenizer_object=spm))


def test_a_scaled_rope_is_refused_for_gguf():
    from transformers import LlamaConfig

    from export.gguf_text import check_plain_rope

    check_plain_rope(LlamaConfig())  # plain RoPE: written
    scaled = LlamaConfig(rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match="scales it \\('linear'\\)"):
        check_plain_rope(scaled)
