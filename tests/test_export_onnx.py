"""`python -m export onnx`: three graphs that answer like the PyTorch model (identical greedy tokens
unquantized, on image + text and text-only prompts, Qwen2 and Qwen3 students), int8 and int4
decoders that load and generate, and bad input refused before anything is written."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from distill.conversation import generation_prompt
from eval.backends import TorchBackend
from eval.questions import read_questions
from export.__main__ import main
from export.check import check, torch_greedy, torch_prompt_logits
from export.onnx_export import ExportError, export_onnx, source_hash
from export.onnx_runner import OnnxLlava
from tests.conftest import save_lively_model

pytest.importorskip("onnxruntime")


def lively(tokenizer, out, text_model_type="qwen2"):
    return save_lively_model(tokenizer, out, seed=3, text_model_type=text_model_type)


def prompts(shapes, backend):
    questions = read_questions(
        "gqa", shapes / "benchmarks" / "gqa" / "llava_gqa_testdev_balanced.jsonl", shapes / "images" / "test"
    )[:4]
    images = [q.image() for q in questions] + [None]
    texts = [backend.chat_text(q) for q in questions]
    texts.append(
        backend.processor.tokenizer.apply_chat_template(
            [{"role": "user", "content": "Say something."}], tokenize=False, add_generation_prompt=True
        )
    )
    return images, texts


@pytest.mark.parametrize("text_model_type", ["qwen2", "qwen3"])
def test_unquantized_export_gives_pytorchs_logits_and_greedy_tokens(
    shapes, tokenizer, tmp_path, text_model_type
):
    model_dir = lively(tokenizer, tmp_path / "student", text_model_type)
    out = export_onnx(model_dir, tmp_path / "onnx")
    assert {p.name for p in out.glob("*.onnx")} == {
        "vision_encoder.onnx",
        "embed_tokens.onnx",
        "decoder_model_merged.onnx",
    }
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"] == "none" and len(manifest["source_sha256"]) == 64
    backend, runner = TorchBackend(model_dir), OnnxLlava(out)
    images, texts = prompts(shapes, backend)
    reference, mask = torch_prompt_logits(backend.model, backend.processor, images, texts)
    logits, onnx_mask = runner.prompt_logits(images, texts)
    real = mask.astype(bool)
    assert (onnx_mask == mask).all() and abs(logits[real] - reference[real]).max() < 1e-4
    expected = torch_greedy(backend.model, backend.processor, images, texts, 12)
    assert runner.generate(images, texts, 12, ignore_eos=True) == expected
    assert len({tuple(t) for t in expected}) == len(expected)  # the prompts really differ


def test_quantized_decoders_load_and_generate(shapes, tokenizer, tmp_path, capsys):
    model_dir = lively(tokenizer, tmp_path / "student")
    backend = TorchBackend(model_dir)
    images, texts = prompts(shapes, backend)
    sizes = {}
    for quant in ("int8", "int4"):
        assert (
            main(["onnx", "--model", str(model_dir), "--out", str(tmp_path / quant), "--quant", quant]) == 0
        )
        runner = OnnxLlava(tmp_path / quant)
        assert runner.manifest["quantization"] == quant
        assert all(len(t) == 6 for t in runner.generate(images, texts, 6, ignore_eos=True))
        assert (tmp_path / quant / "decoder_model_merged.onnx.data").is_file()  # weights beside the graph
        assert not list((tmp_path / quant).glob("*quant*"))  # no intermediate file left
        sizes[quant] = sum(p.stat().st_size for p in runner.weight_files() if p.name.startswith("decoder"))
    assert "int8" in capsys.readouterr().out
    assert sizes["int4"] < sizes["int8"]


def test_fp16_graphs_are_half_the_size_and_answer_like_pytorch(shapes, student_dir, tmp_path, capsys):
    args = ["onnx", "--model", str(student_dir), "--out"]
    assert main([*args, str(tmp_path / "fp16"), "--fp16"]) == 0
    assert "ONNX export (fp16)" in capsys.readouterr().out
    export_onnx(student_dir, tmp_path / "fp32")

    import onnx

    def float_weights(folder):
        graph = onnx.load(str(folder / "decoder_model_merged.onnx")).graph
        return {t.data_type: t.name for t in graph.initializer if len(t.dims) == 2}

    umask = os.umask(0)
    os.umask(umask)
    for path in (tmp_path / "fp16").iterdir():  # the converter writes private files: made readable
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name
    assert set(float_weights(tmp_path / "fp16")) == {onnx.TensorProto.FLOAT16}
    assert set(float_weights(tmp_path / "fp32")) == {onnx.TensorProto.FLOAT}
    runner, backend = OnnxLlava(tmp_path / "fp16"), TorchBackend(student_dir)
    assert runner.manifest["dtype"].startswith("float16")
    images, texts = prompts(shapes, backend)
    reference, mask = torch_prompt_logits(backend.model, backend.processor, images, texts)
    logits, _ = runner.prompt_logits(images, texts)
    real = mask.astype(bool)
    assert abs(logits[real] - reference[real]).max() < 2e-2  # float16 rounding, not a different model
    with pytest.raises(ExportError, match="does not combine with --quant int8"):
        export_onnx(student_dir, tmp_path / "bad", "int8", fp16=True)
    assert not (tmp_path / "bad").exists()


def test_check_prints_the_comparison_table(shapes, student_dir, teacher_dir, tmp_path, capsys):
    export_onnx(student_dir, tmp_path / "onnx")
    args = [
        "check",
        "--model",
        str(student_dir),
        "--export",
        str(tmp_path / "onnx"),
        "--data",
        str(shapes / "test.json"),
    ]
    assert (
        main(
            [
                *args,
                "--prompts",
                "4",
                "--new-tokens",
                "5",
                "--per-family",
                "2",
                "--out",
                str(tmp_path / "c.json"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| pytorch fp32 | 0.00e+00 | 100% | 5.0 |" in printed and "| onnx none (onnx) |" in printed
    row = json.loads((tmp_path / "c.json").read_text())["rows"]["onnx none (onnx)"]
    assert row["identical"] == 1.0 and row["max_logit_diff"] < 1e-4
    with pytest.raises(ExportError, match="was not exported from"):  # another checkpoint's export
        check(teacher_dir, [tmp_path / "onnx"], shapes / "test.json", 1, 1, 1)
    runner = OnnxLlava(tmp_path / "onnx")
    too_long = generation_prompt(runner.processor.tokenizer, "red " * 600)
    with pytest.raises(ValueError, match="the model's context is 512"):
        runner.generate([None], [too_long], 2)

    def spinning(each):
        return {
            s.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
            for s in each.sessions.values()
        }

    assert spinning(runner) == {"0"}  # worker threads sleep between calls, in every session
    assert spinning(OnnxLlava(tmp_path / "onnx", spinning=True)) == {"1"}


def test_the_source_hash_covers_what_the_export_embeds_and_nothing_else(student_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(student_dir, copy)
    before = source_hash(copy)
    (copy / "train_summary.json").write_text("{}")  # a training record: not the model
    assert source_hash(copy) == before
    (copy / "chat_template.jinja").write_text((copy / "chat_template.jinja").read_text() + " ")
    assert source_hash(copy) != before


def test_out_never_replaces_the_checkpoint_or_a_folder_that_is_no_export(student_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(student_dir, copy)
    for out in (copy, tmp_path):  # the checkpoint itself, a folder holding it
        with pytest.raises(ExportError, match="would replace the checkpoint"):
            export_onnx(copy, out)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not an export"):
        export_onnx(copy, other)
    assert (other / "todo.txt").read_text() == "keep me" and (copy / "model.safetensors").is_file()


def test_bad_input_is_refused_and_nothing_is_left_behind(tmp_path, student_dir, monkeypatch, capsys):
    not_llava = tmp_path / "qwen"
    not_llava.mkdir()
    (not_llava / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert main(["onnx", "--model", str(not_llava), "--out", str(tmp_path / "a")]) == 2
    assert "unsupported architecture 'qwen2'" in capsys.readouterr().err
    with pytest.raises(ExportError, match="unknown quantization 'int3'"):
        export_onnx(student_dir, tmp_path / "b", "int3")

    def broken(model, out):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr("export.onnx_export.export_decoder", broken)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_onnx(student_dir, tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qwen"]  # no output, no partial folder


def test_eval_run_answers_through_an_onnx_export_as_through_pytorch(shapes, tokenizer, tmp_path):
    from eval.__main__ import main as eval_main
    from eval.records import read_jsonl

    model_dir = lively(tokenizer, tmp_path / "student")
    export_onnx(model_dir, tmp_path / "student-onnx")
    bench = shapes / "benchmarks" / "pope"
    common = [
        "--bench",
        "pope",
        "--questions",
        str(bench / "llava_pope_test.jsonl"),
        "--images",
        str(shapes / "images" / "test"),
    ]
    common += ["--limit", "6", "--max-new-tokens", "8", "--batch-size", "3"]
    for name in ("student", "student-onnx"):
        assert (
            eval_main(
                ["run", "--model", str(tmp_path / name), *common, "--out", str(tmp_path / f"{name}.jsonl")]
            )
            == 0
        )
    torch_lines, onnx_lines = (
        read_jsonl(tmp_path / "student.jsonl"),
        read_jsonl(tmp_path / "student-onnx.jsonl"),
    )
    assert [line["text"] for line in onnx_lines] == [line["text"] for line in torch_lines]
    assert onnx_lines[0]["model_id"] == "student-onnx"


def test_bench_times_each_format_in_its_own_process(shapes, student_dir, tmp_path, capsys):
    export_onnx(student_dir, tmp_path / "onnx", "int8")
    args = [
        "bench",
        "--model",
        str(student_dir),
        "--export",
        str(tmp_path / "onnx"),
        "--data",
        str(shapes / "test.json"),
    ]
    assert main([*args, "--new-tokens", "3", "--repeats", "2", "--out", str(tmp_path / "b.json")]) == 0
    printed = capsys.readouterr().out
    assert (
        "| pytorch fp32 |" in printed and "| onnx int8 (onnx) |" in printed and "| 1.00x | 1.00x |" in printed
    )
    assert "the formats taking their generations in turn" in printed
    onnx_line = next(line for line in printed.splitlines() if line.startswith("| onnx int8"))
    assert re.search(r"\| \d+\.\d\dx \(\d+\.\d\d-\d+\.\d\d\) \|", onnx_line)  # per-round ratio, middle half
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    for row in rows.values():
        assert row["decode_tokens_per_s"] > 0 and row["first_token_s"] > 0 and row["peak_rss_mib"] > 100
        assert len(row["rounds"]["decode_tokens_per_s"]) == 2


def test_the_bench_imports_a_checkpoints_model_families_before_its_memory_baseline(student_dir):
    script = (
        "import sys; from pathlib import Path; from export.bench import import_model_modules; "
        "name = 'transformers.models.qwen2.modeling_qwen2'; before = name in sys.modules; "
        f"import_model_modules(Path({str(student_dir)!r})); "
        "print(before, name in sys.modules, 'transformers.models.siglip.modeling_siglip' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True", "True"]
