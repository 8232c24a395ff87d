"""TextVQA (val 0.5.1), scored as LLaVA's llava/eval/eval_textvqa.py + m4c_evaluator.py score it.

    python -m eval score --bench textvqa --answers answers.jsonl --annotations TextVQA_0.5.1_val.json

An answer line's question_id is the image id and its prompt carries the question; the pair
(image_id, question.lower()) picks the annotation. The question is the prompt's first of exactly
two lines, or of three with a "Reference OCR token: " line (its second when that line comes first),
or sits in an "OCR tokens: ... Question: Q Short answer:" prompt; any other prompt is an error, as
the official assert is. The prediction and each of the 10 GT answers
are normalized as m4c's EvalAIAnswerProcessor does, quirks included: a punctuation mark is deleted
everywhere when it touches a space anywhere in the text and becomes a space otherwise, at most 32
periods go (`re.UNICODE` is passed as the count), number words up to "ten" become digits, articles
go ("A" becomes ""), and a contraction table applies. A question scores the leave-one-out soft
accuracy: 1.0, 0.9, 0.6 or 0.3 for 4+, 3, 2 or 1 matching GT answers; the figure is the mean x100.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from eval.records import ANSWER_FIELDS, ScoreError, read_json, read_jsonl

# m4c_evaluator.py's CONTRACTIONS, entry for entry ("word=contraction"); the capitalised entries
# never match, since the text is lowercased first, and "somebody'd" maps to "somebodyd" (sic).
CONTRACTION_TABLE = """
    aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
    couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
    hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
    howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd
    itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't
    mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've
    neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at
    'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
    shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
    somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's
    someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll
    someones=someone's somethingd=something'd somethingd've=something'd've something'dve=something'd've
    somethingll=something'll thats=that's thered=there'd thered've=there'd've there'dve=there'd've
    therere=there're theres=there's theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll
    theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've
    werent=weren't whatll=what'll whatre=what're whats=what's whatve=what've whens=when's whered=where'd
    wheres=where's whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's
    whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
    wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
    yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
    you'dve=you'd've youll=you'll youre=you're youve=you've
"""
CONTRACTIONS = dict(entry.split("=") for entry in CONTRACTION_TABLE.split())
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = ("a", "an", "the")
PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'  # one mark per character, in the official order
# (?!<=\d) is a lookahead for the text "<=" and a digit, not a lookbehind: any period not followed
# by a digit goes, "3." included.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
MAX_PERIODS = 32  # PERIOD_STRIP.sub("", text, re.UNICODE): the flag's value lands in `count`
GT_ANSWERS = 10
OCR_QUESTION = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def tokenize(text: str) -> str:
    """EvalAIAnswerProcessor.word_tokenize, then its newline and tab handling."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """Each mark goes where it touches a space anywhere in `text`, else becomes a space; then periods."""
    touches_number_comma = COMMA_STRIP.search(text) is not None  # never, once tokenize dropped commas
    out = text
    for mark in PUNCTUATION:
        if mark + " " in text or " " + mark in text or touches_number_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, count=MAX_PERIODS)


def process_digit_article(text: str) -> str:
    """Number words to digits, articles dropped, then contractions, word by word."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize(answer: str) -> str:
    """m4c's EvalAIAnswerProcessor.__call__."""
    return process_digit_article(process_punctuation(tokenize(answer)))


def soft_accuracy(prediction: str, gt_answers: list[str]) -> float:
    """Mean over the leave-one-out subsets of min(1, matches among the others / 3)."""
    if prediction not in gt_answers:
        return 0.0
    accs = []
    for left_out in range(len(gt_answers)):
        others = gt_answers[:left_out] + gt_answers[left_out + 1 :]
        accs.append(min(1, sum(other == prediction for other in others) / 3))
    return sum(accs) / len(accs)


def question_from_prompt(prompt: str) -> str:
    """eval_textvqa.py's prompt_processor: the question, lowercased, out of an answer line's prompt."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = OCR_QUESTION.search(prompt)
        if match is None:
            raise ScoreError(f"TextVQA: prompt {prompt!r} has no 'Question: ... Short answer:'")
        question = match.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ScoreError(
            f"TextVQA: prompt {prompt!r} is none of the forms prompt_processor reads (it asserts False)"
        )
    return question.lower()


def gt_answers(annotation: dict[str, Any]) -> list[str]:
    answers = [normalize(a) for a in annotation["answers"]]
    if len(answers) != GT_ANSWERS:
        raise ScoreError(
            f"TextVQA: question {annotation['question']!r} (image {annotation['image_id']!r}) has "
            f"{len(answers)} answers, where the official scorer asserts {GT_ANSWERS}"
        )
    return answers


def score(answers: list[dict[str, Any]], annotations: dict[str, Any]) -> dict[str, Any]:
    """Mean soft accuracy (x100) of answer lines against the TextVQA_0.5.1_val.json contents."""
    if not isinstance(annotations, dict) or "data" not in annotations:
        raise ScoreError("TextVQA annotations: expected an object with a 'data' list")
    if not answers:
        raise ScoreError("TextVQA: no answers, where the official scorer divides by zero")
    by_key = {(a["image_id"], a["question"].lower()): a for a in annotations["data"]}
    scores = []
    for answer in answers:
        key = (answer["question_id"], question_from_prompt(answer["prompt"]))
        if key not in by_key:
            raise ScoreError(
                f"TextVQA: no annotation for image_id {key[0]!r} and question {key[1]!r} "
                "(the official scorer raises KeyError)"
            )
        scores.append(soft_accuracy(normalize(answer["text"]), gt_answers(by_key[key])))
    return {"samples": len(scores), "accuracy": 100.0 * (sum(scores) / len(scores))}


def report(result: dict[str, Any]) -> str:
    return f"Samples: {result['samples']}\nAccuracy: {result['accuracy']:.2f}%"


def run(answers: Path, annotations: Path) -> dict[str, Any]:
    return score(read_jsonl(answers, (*ANSWER_FIELDS, "prompt")), read_json(annotations))
