"""MME, scored as LLaVA's convert_answer_to_mme.py and MME's eval_tool/calculation.py score it.

    python -m eval score --bench mme --answers answers.jsonl --questions llava_mme.jsonl \\
        --annotations MME_Benchmark_release_version

Ground truth (get_gt): each category folder that has an images/ folder keeps its `<image>.txt`
files in questions_answers_YN/; any other category keeps them directly inside its own folder (in
the real MME, artwork, celebrity, landmark, posters and scene are of the first kind). Every line
is "question<TAB>Yes|No". An answer finds its line by (category, file, question): the category is
the question_id up to its first "/", the file is the name after its last "/" cut at its first "."
plus ".txt", and the question is the answer's prompt with "Answer the question using a single word
or phrase." taken out and stripped, then " Please answer yes or no." appended, or "  Please ..."
(two spaces) when only that is in the ground truth.

Each category's answers, in answer-file order, become lines "file<TAB>question<TAB>GT<TAB>response";
calculation.py takes them two by two, in that order, as one image's pair. A response is lowercased:
exactly "yes" or "no" stands; else "yes" in its first four characters means yes, else "no" there
means no ("not sure", "none" and "know" included), else it is "other" and wrong. acc is the share
of right answers, acc+ the share of pairs with both right; a subtask scores 100 * acc + 100 * acc+
(at most 200). Perception sums existence ... OCR (at most 2000; LLaVA's "MME"), Cognition sums
the four reasoning subtasks (at most 800).

Where the official scripts stop, this scorer raises ScoreError: an answer without ground truth, a
response with a tab or a line break (calculation.py reads it as a malformed line), a category with
an odd number of answers. A subtask without answers, where calculation.py stops on the missing
file, is left out of its total and listed as absent. A subtask whose answers are all "other"
scores 0, as under scikit-learn 1.3; scikit-learn 1.9 stops calculation.py there (its unprinted
precision gets no samples). The question file is read only to check the answers' question_ids
and to count unanswered questions; the pairing is never repaired, but pairs of lines about two
different images are counted.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from eval.records import ANSWER_FIELDS, ScoreError, read_jsonl

PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
GROUPS = {"Perception": PERCEPTION, "Cognition": COGNITION}  # calculation.py's eval_type_dict
SHORT_ANSWER = "Answer the question using a single word or phrase."
YES_NO = "Please answer yes or no."
QA_FOLDER = "questions_answers_YN"

GroundTruth = dict[tuple[str, str, str], str]  # (category, file, question) -> "Yes" | "No"
Row = tuple[str, str, str, str]  # one line of eval_tool/answers/<exp>/<category>.txt


def qa_folder(category_dir: Path) -> Path:
    """get_gt: questions_answers_YN/ beside an images/ folder, else the category folder itself."""
    return category_dir / QA_FOLDER if (category_dir / "images").exists() else category_dir


def read_ground_truth(root: Path) -> GroundTruth:
    """get_gt over MME_Benchmark_release_version: every .txt file of every category's QA folder."""
    root = Path(root)
    if not root.is_dir():
        raise ScoreError(f"{root}: no such folder (expected MME_Benchmark_release_version)")
    truth: GroundTruth = {}
    for category_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        folder = qa_folder(category_dir)
        if not folder.is_dir():
            raise ScoreError(f"{category_dir}: has images/ but no {QA_FOLDER}/ (get_gt asserts here)")
        for path in sorted(p for p in folder.iterdir() if p.name.endswith(".txt")):
            truth.update(((category_dir.name, path.name, q), a) for q, a in read_qa_file(path))
    return truth


def read_qa_file(path: Path) -> list[tuple[str, str]]:
    """(question, answer) per line; get_gt strips each line and splits it at its one tab."""
    pairs = []
    with open(path, encoding="utf-8") as handle:  # universal newlines, as get_gt's open()
        for number, line in enumerate(handle, 1):
            fields = line.strip().split("\t")
            if len(fields) != 2:
                raise ScoreError(f"{path}, line {number}: expected 'question<TAB>answer' (get_gt stops here)")
            pairs.append((fields[0], fields[1]))
    return pairs


def locate(question_id: Any) -> tuple[str, str]:
    """(category, ground-truth file name) from "<cat>/<img>" or "<cat>/images/<img>"."""
    if not isinstance(question_id, str):
        raise ScoreError(f"MME question_id {question_id!r} is not a '<category>/<image>' string")
    return question_id.split("/")[0], question_id.split("/")[-1].split(".")[0] + ".txt"


def gt_question(prompt: str, key: tuple[str, str], truth: GroundTruth) -> str:
    """The ground-truth question an answer's prompt stands for (convert_answer_to_mme.py)."""
    if SHORT_ANSWER in prompt:
        prompt = prompt.replace(SHORT_ANSWER, "").strip()
    if YES_NO in prompt:
        return prompt
    single = f"{prompt} {YES_NO}"
    return single if (*key, single) in truth else f"{prompt}  {YES_NO}"


def no_truth_message(answer: dict[str, Any], key: tuple[str, str], question: str, root: Path) -> str:
    category_dir = Path(root) / key[0]
    where = qa_folder(category_dir) / key[1]
    tried = f"{question!r} (nor its one-space form)" if f"  {YES_NO}" in question else repr(question)
    message = (
        f"MME: no ground truth for answer {answer['question_id']!r}: {tried} is not a line of"
        f" {where} (convert_answer_to_mme.py stops here with a KeyError)"
    )
    if where.parent == category_dir and (category_dir / QA_FOLDER).is_dir():
        message += f"; {key[0]}/ has {QA_FOLDER}/ but no images/, so get_gt reads {key[0]}/*.txt instead"
    return message


def convert(answers: list[dict[str, Any]], truth: GroundTruth, root: Path) -> dict[str, list[Row]]:
    """convert_answer_to_mme.py: each category's lines, in answer-file order."""
    rows: dict[str, list[Row]] = {}
    for answer in answers:
        category, file = key = locate(answer["question_id"])
        question = gt_question(answer["prompt"], key, truth)
        if (category, file, question) not in truth:
            raise ScoreError(no_truth_message(answer, key, question, root))
        response = answer["text"]
        if not isinstance(response, str) or any(c in response for c in "\t\n\r"):
            raise ScoreError(
                f"MME: the response to {answer['question_id']!r} ({question!r}) is not one line of"
                f" text (a tab or a line break makes calculation.py read a malformed line): {response!r}"
            )
        rows.setdefault(category, []).append((file, question, truth[(category, file, question)], response))
    return rows


def parse_answer(response: str) -> str:
    """'yes', 'no' or 'other', as calculation.py's parse_pred_ans reads a (lowercased) response."""
    response = response.lower()
    if response in ("yes", "no"):
        return response
    if "yes" in response[:4]:
        return "yes"
    return "no" if "no" in response[:4] else "other"


def subtask_metrics(category: str, rows: list[Row]) -> dict[str, Any]:
    """acc, acc+ (both x100) and their sum over one category's lines, paired two by two in order."""
    if len(rows) % 2:
        raise ScoreError(
            f"MME {category}: {len(rows)} answers, an odd number; calculation.py pairs them two by two"
            " and stops at the last one"
        )
    right, other = [], 0
    for file, _, truth, response in rows:
        if truth.lower() not in ("yes", "no"):
            raise ScoreError(f"MME {category}/{file}: ground truth {truth!r} is neither yes nor no")
        label = parse_answer(response + "\n")  # readlines keeps the "\n"; it never changes the label
        right.append(label == truth.lower())
        other += label == "other"
    pairs = range(0, len(rows), 2)
    acc = 100 * (sum(right) / len(right))
    acc_plus = 100 * (sum(right[i] and right[i + 1] for i in pairs) / len(pairs))
    return {
        "questions": len(rows),
        "acc": acc,
        "acc_plus": acc_plus,
        "score": acc + acc_plus,
        "other": other,
        "pairs_across_images": sum(rows[i][0] != rows[i + 1][0] for i in pairs),
    }


def unanswered(answers: list[dict[str, Any]], questions: list[dict[str, Any]]) -> int:
    """Question-file questions with no answer (MME repeats each question_id, so the prompt counts too)."""
    known = {q["question_id"] for q in questions}
    for answer in answers:
        if answer["question_id"] not in known:
            raise ScoreError(f"answer for question_id {answer['question_id']!r} is not in the question file")
    asked = Counter((q["question_id"], q["text"]) for q in questions)
    asked.subtract((a["question_id"], a["prompt"]) for a in answers)
    return sum(n for n in asked.values() if n > 0)


def score(answers: list[dict[str, Any]], questions: list[dict[str, Any]], gt_root: Path) -> dict[str, Any]:
    """Per-subtask acc, acc+ and score, and the Perception and Cognition totals."""
    missing = unanswered(answers, questions)
    rows = convert(answers, read_ground_truth(gt_root), gt_root)
    subtasks = {
        name: subtask_metrics(name, rows[name]) for group in GROUPS.values() for name in group if name in rows
    }
    totals = {
        group.lower(): sum(subtasks[name]["score"] for name in names if name in subtasks)
        for group, names in GROUPS.items()
    }
    return {
        **totals,
        "subtasks": subtasks,
        "absent": [name for names in GROUPS.values() for name in names if name not in rows],
        "unscored_categories": sorted(set(rows) - set(PERCEPTION) - set(COGNITION)),
        "unanswered": missing,
    }


def report(result: dict[str, Any]) -> str:
    """calculation.py's printout (total, then each subtask's score), then what was left out."""
    lines = []
    for group, names in GROUPS.items():
        lines += [f"=========== {group} ===========", f"total score: {result[group.lower()]} ", ""]
        lines += [
            f"\t {n}  score: {result['subtasks'][n]['score']}" for n in names if n in result["subtasks"]
        ]
        absent = [n for n in names if n in result["absent"]]
        lines += [f"\t (no answers, left out: {', '.join(absent)})"] if absent else []
        lines += ["", ""]
    across = sum(m["pairs_across_images"] for m in result["subtasks"].values())
    if across:
        lines.append(f"{across} pairs join answers about two images (answers not in question-file order)")
    if result["unscored_categories"]:
        lines.append(f"categories calculation.py does not read: {', '.join(result['unscored_categories'])}")
    if result["unanswered"]:
        lines.append(f"{result['unanswered']} questions of the question file have no answer")
    lines.append(f"MME Perception: {result['perception']:.2f}, Cognition: {result['cognition']:.2f}")
    return "\n".join(lines)


def run(answers: Path, questions: Path, annotations: Path) -> dict[str, Any]:
    return score(
        read_jsonl(answers, (*ANSWER_FIELDS, "prompt")),
        read_jsonl(questions, ("question_id", "text")),
        annotations,
    )
