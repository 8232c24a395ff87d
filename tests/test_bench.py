"""`distill bench` runs both parts end to end at small sizes and reports consistent figures
(the figures themselves are measurements, printed by the command, never asserted here)."""

import json
import os

import pytest

from distill.__main__ import main


@pytest.mark.slow
def test_bench_reports_both_parts(tmp_path, shapes, capsys):
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "--steps",
        "2",
        "--repeats",
        "2",
        "--data",
        str(shapes / "train.json"),
        "--positions",
        "96",
    ]
    args += ["--vocab", "2000", "--student-hidden", "32", "--teacher-hidden", "48", "--chunk-size", "16"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "KD / SFT: step time" in printed and "chunked / naive: memory" in printed
    results = json.loads(out.read_text())
    for mode in ("sft", "kd"):  # two rounds, each with a process per method
        assert [r["mode"] for r in results["steps"][mode]["rounds"]] == [mode, mode]
    loss = results["loss"]
    assert loss["naive"]["loss"] == pytest.approx(loss["chunked"]["loss"], rel=1e-5)
    assert loss["chunked_autograd"]["loss"] == pytest.approx(loss["chunked"]["loss"], rel=1e-5)
    assert "closed-form gradient / autograd's (both checkpointed): time" in printed
    assert "HeadDivergence / checkpointed chunks: time" in printed
    assert loss["chunked_checkpointed"]["loss"] == pytest.approx(loss["chunked"]["loss"], rel=1e-5)
    # main() asks for huge pages unless the environment said otherwise; the comparison row runs without
    assert loss["chunked"]["huge_pages"] == (os.environ.get("THP_MEM_ALLOC_ENABLE") == "1")
    assert not loss["chunked_small_pages"]["huge_pages"]
    assert not out.with_name(out.name + ".partial").exists()


def test_bench_loss_part_times_the_jsd_against_its_autograd_chain(tmp_path, capsys):
    out = tmp_path / "loss.json"
    args = ["bench", "--part", "loss", "--divergence", "jsd", "--positions", "80", "--vocab", "500"]
    args += ["--student-hidden", "16", "--teacher-hidden", "24", "--chunk-size", "32", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Distillation loss alone (jsd, forward + backward), 80 positions x 500 vocabulary" in printed
    assert "HeadDivergence / checkpointed chunks: time" in printed
    loss = json.loads(out.read_text())["loss"]
    assert loss["spec"]["divergence"] == "jsd"
    forms = ("naive", "chunked", "chunked_checkpointed", "chunked_autograd", "chunked_small_pages")
    values = [loss[form]["loss"] for form in forms]
    assert 0 < values[0] <= 0.6932  # a JSD at beta 0.5 lies in (0, log 2]
    assert values == pytest.approx([values[0]] * 5, rel=1e-5)


@pytest.mark.slow
def test_bench_times_each_method_against_kd(tmp_path, shapes, teacher_dir, capsys):
    out = tmp_path / "methods.json"
    args = [
        "bench",
        "--part",
        "steps",
        "--steps",
        "1",
        "--repeats",
        "1",
        "--data",
        str(shapes / "train.json"),
    ]
    assert main([*args, "--methods", "kd,iva,tpa-kv,tpa-ribbon,align-ti,gkd", "--out", str(out)]) == 0
    steps = json.loads(out.read_text())["steps"]
    printed = capsys.readouterr().out
    assert steps["kd"]["time_over_kd"] == 1.0
    for method in ("iva", "tpa-kv", "tpa-ribbon", "align-ti", "gkd"):
        assert steps[method]["time_over_kd"] > 0 and f"| {method} |" in printed
    assert [m for m in steps if isinstance(steps[m], dict) and steps[m].get("step_statistic") == "mean"] == [
        "gkd"
    ]
    assert "gkd: the mean step, not the median" in printed
    counts = steps["tpa-kv"]["tpa_candidates"]
    assert 0 < counts["continued"] <= counts["all"] and steps["kd"]["tpa_candidates"]["all"] == 0
    trained = [*args, "--teacher", str(teacher_dir), "--student", str(teacher_dir), "--out", str(out)]
    assert main([*trained, "--methods", "kd,tpa-kv"]) == 0  # checkpoints instead of random weights
    assert f"teacher: {teacher_dir}; student: {teacher_dir}" in capsys.readouterr().out
    assert main([*args, "--methods", "kd,dpo", "--out", str(out)]) == 2  # unknown method: a clear error
    assert "unknown dpo" in capsys.readouterr().err


@pytest.mark.slow
def test_paired_bench_runs_every_method_on_the_same_batches(tmp_path, shapes, capsys):
    out = tmp_path / "paired.json"
    methods = "kd,sft,iva,tpa-kv,tpa-ribbon,align-ti,gkd,llavadi,emkd"
    args = ["bench", "--part", "paired", "--steps", "1", "--data", str(shapes / "train.json")]
    assert main([*args, "--methods", methods, "--out", str(out)]) == 0
    paired = json.loads(out.read_text())["paired"]["methods"]
    expected_terms = {
        "kd": ["kd", "sft"],
        "sft": ["sft"],
        "iva": ["iva", "kd", "sft"],
        "tpa-kv": ["kd", "sft", "tpa"],
        "tpa-ribbon": ["kd", "sft", "tpa"],
        "align-ti": ["iva", "kd", "sft", "tpa"],
        "gkd": ["kd"],
        "llavadi": ["hidden", "kd", "sft"],
        "emkd": ["kd", "sft", "vlad", "vsd"],
    }
    assert {method: m["terms"] for method, m in paired.items()} == expected_terms
    assert paired["kd"]["over_kd"] == 1.0 and all(m["over_kd"] > 0 for m in paired.values())
    # GKD timed both ways on every batch, its row the expectation at lambda 0.5
    gkd = paired["gkd"]
    assert [method for method, m in paired.items() if "branches" in m] == ["gkd"]
    assert gkd["on_policy_ratio"] == 0.5 and {k: len(v) for k, v in gkd["branches"].items()} == {
        "sampled": 1,
        "not": 1,
    }
    assert gkd["seconds"] == [
        pytest.approx(0.5 * gkd["branches"]["sampled"][0] + 0.5 * gkd["branches"]["not"][0])
    ]
    printed = capsys.readouterr().out
    assert "| align-ti | iva + kd + sft + tpa |" in printed
    assert "gkd: each batch timed both ways" in printed


def test_a_failed_lockstep_worker_is_reported_without_waiting_for_the_others():
    import subprocess
    import sys
    import time

    from distill.bench import first_failure

    waiting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    failing = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    start = time.monotonic()
    try:
        assert first_failure([waiting, failing]) == 1
        assert time.monotonic() - start < 30
    finally:
        waiting.kill()
    done = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(2)]
    assert first_failure(done) is None


def test_set_overrides_come_after_each_methods_own():
    from distill.bench import trainer_overrides

    spec = {"output_dir": "out", "data": "train.json", "teacher": "t", "tokenizer": "t", "mode": "iva"}
    overrides = trainer_overrides({**spec, "overrides": ["loss.w_iva=0.5", "train.batch_size=2"]})
    assert overrides[-2:] == ["loss.w_iva=0.5", "train.batch_size=2"]
    assert overrides.index("loss.w_iva=1.0") < overrides.index("loss.w_iva=0.5")


@pytest.mark.slow
def test_paired_bench_applies_set_to_every_method(tmp_path, shapes, capsys):
    out = tmp_path / "paired.json"
    args = ["bench", "--part", "paired", "--steps", "1", "--data", str(shapes / "train.json")]
    assert main([*args, "--methods", "kd,iva", "--set", "loss.w_sft=0.0", "--out", str(out)]) == 0
    paired = json.loads(out.read_text())["paired"]
    assert {method: m["terms"] for method, m in paired["methods"].items()} == {
        "kd": ["kd"],
        "iva": ["iva", "kd"],
    }
    assert paired["weights"]["overrides"] == ["loss.w_sft=0.0"]
    assert "; with loss.w_sft=0.0." in capsys.readouterr().out


def test_an_on_policy_methods_row_is_explained_by_its_two_kinds():
    from distill.bench_paired import on_policy_branches, on_policy_line
    from distill.run_config import LossConfig

    gkd = {"branches": {"sampled": [2.0, 2.2, 2.4], "not": [1.0, 1.2, 0.9]}, "on_policy_ratio": 0.25}
    assert on_policy_line("gkd", gkd) == (
        "gkd: each batch timed both ways, answers first sampled from the student (2200.0 ms, the median) and "
        "not (1000.0 ms); its row is the expectation at loss.on_policy_ratio 0.25 (0.25 x sampled + 0.75 x "
        "not, batch by batch)."
    )
    kinds = on_policy_branches(LossConfig(w_kd=1.0, on_policy_ratio=0.5))
    assert {kind: c.on_policy_ratio for kind, c in kinds.items()} == {"sampled": 1.0, "not": 0.0}


def test_an_on_policy_methods_step_time_is_the_mean_of_its_two_kinds():
    from distill.bench import step_time

    steps = [1.0, 1.0, 1.0, 5.0, 5.0]  # three steps without sampling, two with
    assert step_time(steps, on_policy=False) == (1.0, "median")
    assert step_time(steps, on_policy=True) == (2.6, "mean")
