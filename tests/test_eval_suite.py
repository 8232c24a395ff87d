"""`python -m eval suite`: several models through the runner and the official scorers, with a
comparison table (markdown + JSON) and a bar chart; answers are resumed, layouts are checked."""

import json
import shutil

from eval.__main__ import main
from eval.questions import read_questions
from eval.suite import HEADLINE, SUITE_BENCHES, comparison, default_layout, headline_percent


def suite_args(shapes, out, *models):
    return [
        "suite",
        "--models",
        *map(str, models),
        "--root",
        str(shapes / "benchmarks"),
        "--images",
        str(shapes / "images" / "test"),
        "--out",
        str(out),
        "--limit",
        "8",
        "--max-new-tokens",
        "4",
    ]


def test_suite_answers_scores_and_compares_every_benchmark(
    shapes, teacher_dir, student_dir, tmp_path, capsys
):
    out = tmp_path / "eval"
    assert main(suite_args(shapes, out, teacher_dir, student_dir)) == 0
    printed = capsys.readouterr().out
    assert "| model | GQA | SQA-IMG | TextVQA | POPE F1 | MME-P | MMBench |" in printed
    saved = json.loads((out / "suite.json").read_text())
    assert saved["benches"] == list(SUITE_BENCHES) and set(saved["results"]) == {"teacher", "student"}
    layout = default_layout(shapes / "benchmarks", shapes / "images" / "test")
    for bench in SUITE_BENCHES:
        files = layout[bench]
        expected = min(8, len(read_questions(bench, files["questions"], files.get("images"))))
        for model in ("teacher", "student"):
            assert len((out / model / f"{bench}.jsonl").read_text().splitlines()) == expected
            score = json.loads((out / model / f"{bench}.{bench}-score.json").read_text())
            assert score[HEADLINE[bench][0]] == saved["results"][model][bench][HEADLINE[bench][0]]
    assert (out / "suite.md").read_text().strip() == comparison(saved["results"], saved["benches"])
    assert (out / "suite.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run finds every answer in place and only re-scores
    assert main(suite_args(shapes, out, teacher_dir, student_dir)) == 0
    rerun = capsys.readouterr().out
    assert rerun.count(", 0 to answer") == 2 * len(SUITE_BENCHES) and "samples/s" not in rerun


def test_mme_headline_on_the_chart_is_a_share_of_the_subtasks_present():
    result = {"perception": 300.0, "subtasks": {"count": {}, "color": {}, "commonsense_reasoning": {}}}
    assert headline_percent("mme", result) == 75.0  # two perception subtasks: at most 400


def test_a_layout_file_with_an_unknown_key_or_benchmark_is_refused(shapes, student_dir, tmp_path, capsys):
    layout = tmp_path / "layout.yaml"
    layout.write_text("gqa:\n  question: /data/gqa.jsonl\n")
    assert main([*suite_args(shapes, tmp_path, student_dir), "--layout", str(layout)]) == 2
    assert "unknown keys ['question']" in capsys.readouterr().err
    layout.write_text("vqav2:\n  questions: /data/v.jsonl\n")
    assert main([*suite_args(shapes, tmp_path, student_dir), "--layout", str(layout)]) == 2
    assert "unknown benchmark 'vqav2'" in capsys.readouterr().err


def test_one_model_given_twice_is_refused(shapes, student_dir, tmp_path, capsys):
    assert main(suite_args(shapes, tmp_path, student_dir, student_dir)) == 2
    assert "given twice" in capsys.readouterr().err


def test_two_models_whose_folders_share_a_name_are_told_apart(shapes, student_dir, tmp_path, capsys):
    copies = []
    for run in ("seed-0", "seed-1"):
        copy = tmp_path / "runs" / run / "kd" / "final"
        shutil.copytree(student_dir, copy)
        copies.append(copy)
    out = tmp_path / "eval"
    args = suite_args(shapes, out, *copies)
    assert main([*args[:-4], "--limit", "2", "--max-new-tokens", "2", "--benches", "pope"]) == 0
    printed = capsys.readouterr().out
    assert "| seed-0/kd |" in printed and "| seed-1/kd |" in printed
    for run in ("seed-0", "seed-1"):
        lines = (out / run / "kd" / "pope.jsonl").read_text().splitlines()
        assert len(lines) == 2 and all(json.loads(line)["model_id"] == f"{run}/kd" for line in lines)


def test_a_benchmark_the_official_scorer_cannot_score_is_reported_not_fatal(
    shapes, student_dir, tmp_path, capsys
):
    out = tmp_path / "eval"
    args = [*suite_args(shapes, out, student_dir)[:-4], "--limit", "8", "--max-new-tokens", "2"]
    assert main([*args, "--benches", "gqa", "pope"]) == 0
    answers = out / "student" / "pope.jsonl"
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    answers.write_text("".join(json.dumps({**line, "text": "No"}) + "\n" for line in lines))  # never yes
    capsys.readouterr()
    assert main([*args, "--benches", "gqa", "pope"]) == 0
    printed = capsys.readouterr().out
    assert "not scored: POPE" in printed and "where the official scorer divides by zero" in printed
    saved = json.loads((out / "suite.json").read_text())
    assert (
        "not_scored" in saved["results"]["student"]["pope"]
        and "accuracy" in saved["results"]["student"]["gqa"]
    )
    table = (out / "suite.md").read_text()
    assert "| student | " in table and "| n/a (1) |" in table and "(1) student, POPE F1: not scored" in table
    assert (out / "suite.png").is_file()


def test_a_missing_benchmark_file_still_stops_the_suite(shapes, student_dir, tmp_path, capsys):
    layout = tmp_path / "layout.yaml"
    layout.write_text(f"pope:\n  annotations: {tmp_path / 'no-such-folder'}\n")
    args = [*suite_args(shapes, tmp_path / "eval", student_dir)[:-4], "--limit", "4", "--max-new-tokens", "2"]
    assert main([*args, "--benches", "pope", "--layout", str(layout)]) == 2
    assert "no-such-folder" in capsys.readouterr().err
