"""`python -m serve bench`: engine mode (each model in its own process, the models taking their rounds in
turn or one after another, API TTFT beside engine TTFT, JSON + markdown + PNG) and load mode against a running server (no errors, latency percentiles, server RSS)."""

import json
import re
import threading
import time

import uvicorn

from serve.__main__ import main
from serve.app import Settings, create_app
from serve.engines import open_engine


def test_engine_mode_measures_every_model_and_writes_the_report(
    shapes, student_dir, teacher_dir, tmp_path, capsys
):
    out = tmp_path / "bench"
    args = ["bench", "--models", str(student_dir), str(teacher_dir), "--data", str(shapes / "test.json")]
    assert main([*args, "--requests", "2", "--new-tokens", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| student | torch float32 |" in printed and "| teacher | torch float32 |" in printed
    assert "the models taking their rounds in turn" in printed
    teacher_line = next(line for line in printed.splitlines() if line.startswith("| teacher |"))
    assert re.search(
        r"\| \d+\.\d\dx \(\d+\.\d\d-\d+\.\d\d\) \| \d+\.\d\dx \(", teacher_line
    )  # per-round ratios
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert all(len(r["rounds"]["ttft_ms"]) == 2 and None not in r["rounds"]["ttft_ms"] for r in rows)
    assert all(r["ttft_ms"] > 0 and r["api_ttft_ms"] > 0 and r["decode_tokens_per_s"] > 0 for r in rows)
    on_disk = sum(f.stat().st_size for f in student_dir.glob("*.safetensors")) / 2**20
    assert rows[0]["weights_mib"] == on_disk and rows[1]["weights_mib"] > on_disk
    assert on_disk < rows[0]["peak_tensor_mib"] < rows[1]["peak_tensor_mib"]  # weights + cache + activations
    assert rows[0]["memory_kind"] == "peak RSS above imports" and (out / "bench.png").stat().st_size > 1000
    assert (out / "bench.md").read_text().startswith("one image + question")


def test_a_gguf_worker_runs_without_torch_and_every_row_has_its_whole_process_peak(
    shapes, student_dir, tmp_path, capsys
):
    from export.gguf_export import export_gguf

    export_gguf(student_dir, tmp_path / "gguf", ["f32"])
    out = tmp_path / "bench"
    args = [
        "bench",
        "--models",
        str(student_dir),
        str(tmp_path / "gguf"),
        "--data",
        str(shapes / "test.json"),
    ]
    assert (
        main(
            [
                *args,
                "--requests",
                "1",
                "--warm-up",
                "1",
                "--new-tokens",
                "2",
                "--out",
                str(out),
                "--sequential",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "peak RSS, process (MiB)" in printed and "one model after another; ratios of medians" in printed
    torch_row, gguf_row = json.loads((out / "bench.json").read_text())["rows"]
    assert torch_row["torch_imported"] and not gguf_row["torch_imported"]
    for row in (torch_row, gguf_row):
        assert row["peak_rss_mib"] > row["peak_memory_mib"] > 0  # the whole process holds the imports too
    assert gguf_row["peak_rss_mib"] < torch_row["peak_rss_mib"]  # no PyTorch, no transformers


def test_a_model_that_fails_costs_its_row_only(shapes, student_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "preprocessor_config.json", "processor_config.json"):
        if (student_dir / name).exists():
            (broken / name).write_bytes((student_dir / name).read_bytes())
    (broken / "model.safetensors").write_bytes(b"not weights")
    out = tmp_path / "bench"
    args = ["bench", "--models", str(broken), str(student_dir), "--data", str(shapes / "test.json")]
    assert main([*args, "--requests", "1", "--warm-up", "0", "--new-tokens", "2", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert (
        "| student | torch float32 |" in captured.out and "1 of 2 models failed: benchmark of" in captured.out
    )
    assert "benchmark of" in captured.err and str(broken) in captured.err
    report = json.loads((out / "bench.json").read_text())
    assert [r["model"] for r in report["rows"]] == ["student"] and len(report["failed"]) == 1


def test_load_mode_against_a_running_server(shapes, student_dir, tmp_path, capsys):
    server = uvicorn.Server(
        uvicorn.Config(create_app(open_engine(student_dir), Settings(api_key="k")), port=0, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        args = ["bench", "--url", f"http://127.0.0.1:{port}", "--concurrency", "4", "--requests", "12"]
        args += ["--new-tokens", "3", "--data", str(shapes / "test.json"), "--out", str(tmp_path)]
        assert main([*args, "--api-key", "k"]) == 0
        printed = capsys.readouterr().out
        assert "12 streaming requests at concurrency 4: 0 errors" in printed
        result = json.loads((tmp_path / "load.json").read_text())
        assert result["latency_p95_ms"] > 0 and result["server_rss_after_run_mib"] > 0
        assert result["statuses"] == {"200": 12}  # the timed requests only, not the warm-ups
        assert main(args) == 1  # no key: every request refused, and still a report
        assert "12 errors" in capsys.readouterr().out
        assert json.loads((tmp_path / "load.json").read_text())["latency_p95_ms"] is None
    finally:
        server.should_exit = True
        thread.join(timeout=10)
