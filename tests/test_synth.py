"""The synthetic world: deterministic, well-formed, and written in the benchmarks' formats."""

import base64
import csv
import hashlib
import io
import json
from collections import Counter

import pytest
from PIL import Image

from distill.synth.make import synthesize
from distill.synth.questions import CHOICE_SUFFIX, SHORT_SUFFIX


def digest(folder):
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, shapes):
    again = synthesize(tmp_path / "again", seed=0, n_train=48, n_val=8, n_test=30, per_family=6)
    assert digest(tmp_path / "again") == digest(shapes)
    assert again["records"]["train"] == 48 + round(48 * 0.03)
    synthesize(tmp_path / "other", seed=1, n_train=48, n_val=8, n_test=30, per_family=6)
    assert digest(tmp_path / "other") != digest(shapes)


def test_an_existing_dataset_is_kept_or_refused(tmp_path):
    synthesize(tmp_path / "d", n_train=8, n_val=2, n_test=10, per_family=2)
    synthesize(tmp_path / "d", n_train=8, n_val=2, n_test=10, per_family=2)  # same settings: kept
    try:
        synthesize(tmp_path / "d", n_train=9, n_val=2, n_test=10, per_family=2)
    except FileExistsError as error:
        assert "--force" in str(error)
    else:
        raise AssertionError("a dataset made with other settings was silently reused")


def test_a_dataset_from_another_generator_version_is_refused(tmp_path, monkeypatch):
    from distill.synth import make

    synthesize(tmp_path / "d", n_train=8, n_val=2, n_test=10, per_family=2)
    monkeypatch.setattr(make, "generator_fingerprint", lambda: "0123456789abcdef")  # an edited generator
    with pytest.raises(FileExistsError, match="another version of the generator .generator differ.*--force"):
        synthesize(tmp_path / "d", n_train=8, n_val=2, n_test=10, per_family=2)


def test_training_records_are_llava_format(shapes):
    records = json.loads((shapes / "train.json").read_text())
    for record in records:
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        placeholders = sum(t["value"].count("<image>") for t in turns)
        assert placeholders == (1 if "image" in record else 0)
        if "image" in record:
            assert turns[0]["value"].startswith("<image>\n")
            assert (shapes / record["image"]).is_file()
    assert any(len(r["conversations"]) > 2 for r in records)  # multi-turn
    assert any("image" not in r for r in records)  # text-only


def test_the_chat_template_costs_few_tokens(tokenizer):
    """The tokenizer learnt the ChatML role names: the template around a turn is a handful of tokens."""
    assert len(tokenizer.tokenize("user")) == 1
    assert len(tokenizer.tokenize("assistant")) == 1
    messages = [{"role": "user", "content": "<image>\nWhat?"}, {"role": "assistant", "content": "Yes"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    bare = tokenizer("<image>\nWhat?")["input_ids"] + tokenizer("Yes")["input_ids"]
    assert len(tokenizer(rendered)["input_ids"]) - len(bare) == 10  # im_start role \n ... im_end \n, twice


def test_heldout_questions_cover_every_family_with_answers(shapes):
    records = json.loads((shapes / "test.json").read_text())
    families = Counter(r["family"] for r in records)
    assert set(families) == {"colour", "shape", "count", "position", "reading", "yes/no", "multiple-choice"}
    for r in records:
        prompt = r["conversations"][0]["value"]
        assert prompt.endswith(CHOICE_SUFFIX if r["family"] == "multiple-choice" else SHORT_SUFFIX)
        assert r["conversations"][1]["value"] == r["answer"]
        assert r["n_choices"] >= 2
    prompts = {"Describe the image in detail.", "Give a detailed description of the picture."}
    descriptions = [
        r
        for r in json.loads((shapes / "train.json").read_text())
        if r["conversations"][0]["value"].split("\n")[-1] in prompts
    ]
    assert descriptions and all(30 <= len(r["conversations"][1]["value"].split()) <= 80 for r in descriptions)


def test_benchmark_files_follow_the_official_layouts(shapes):
    bench = shapes / "benchmarks"
    gqa = [
        json.loads(line)
        for line in (bench / "gqa" / "llava_gqa_testdev_balanced.jsonl").read_text().splitlines()
    ]
    annotations = json.loads((bench / "gqa" / "testdev_balanced_questions.json").read_text())
    assert all(q["text"].endswith(SHORT_SUFFIX) and annotations[q["question_id"]]["isBalanced"] for q in gqa)

    sqa = json.loads((bench / "scienceqa" / "llava_test_CQM-A.json").read_text())
    problems = json.loads((bench / "scienceqa" / "problems.json").read_text())
    splits = json.loads((bench / "scienceqa" / "pid_splits.json").read_text())
    assert set(splits["test"]) == {q["id"] for q in sqa}
    for q in sqa:
        problem = problems[q["id"]]
        assert q["conversations"][1]["value"] == "ABCDE"[problem["answer"]]
        assert ("Context:" in q["conversations"][0]["value"]) == bool(problem["hint"])
        assert q["conversations"][0]["value"].startswith("<image>\n") == ("image" in q)

    textvqa = json.loads((bench / "textvqa" / "TextVQA_0.5.1_val.json").read_text())["data"]
    assert all(len(item["answers"]) == 10 for item in textvqa)

    pope = [json.loads(line) for line in (bench / "pope" / "llava_pope_test.jsonl").read_text().splitlines()]
    labels = {
        split: [
            json.loads(line)
            for line in (bench / "pope" / "coco" / f"coco_pope_{split}.json").read_text().splitlines()
        ]
        for split in ("random", "popular", "adversarial")
    }
    for split, items in labels.items():
        questions = [q for q in pope if q["category"] == split]
        assert [q["question_id"] for q in questions] == [item["question_id"] for item in items]
        assert {item["label"] for item in items} == {"yes", "no"}

    mme = [json.loads(line) for line in (bench / "mme" / "llava_mme.jsonl").read_text().splitlines()]
    for first, second in zip(mme[::2], mme[1::2]):  # yes/no pairs are adjacent
        assert first["question_id"] == second["question_id"]
        category, image = first["question_id"].split("/")
        gt_file = bench / "mme" / "MME_Benchmark_release_version" / category / image.replace(".png", ".txt")
        gt = gt_file.read_text().splitlines()  # flat layout: these categories have no images/ folder
        assert [line.split("\t")[1] for line in gt] == ["Yes", "No"]

    with open(bench / "mmbench" / "mmbench_dev_20230712.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    by_question = {}
    for row in rows:
        by_question.setdefault(int(row["index"]) % 1_000_000, []).append(row)
    for group in by_question.values():
        assert len(group) == 4  # the question and its three circular shifts
        answers = {row[row["answer"]] for row in group}
        assert len(answers) == 1  # the correct option text is the same in every rotation
    Image.open(io.BytesIO(base64.b64decode(rows[0]["image"]))).verify()
