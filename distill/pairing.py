"""Checks that a teacher and a student can be distilled together, before any weights are loaded.

Logit distillation compares the two models' next-token distributions position by position, so
they must share the vocabulary (the same token -> id map), the chat template and the image
placeholder. The number of visual tokens may differ for logit KD (each model gets its own view of
the image); IVA needs it equal, which `PairReport.same_visual_tokens` tells.

    report = check_pair(student_config, student_processor, teacher_config, teacher_processor)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distill.modeling import image_token_count


class PairError(ValueError):
    """Teacher and student cannot be paired; the message names what differs."""


@dataclass
class PairReport:
    vocab_size: int  # the shared tokenizer vocabulary; distributions are compared over these ids
    student_visual_tokens: int
    teacher_visual_tokens: int

    @property
    def same_visual_tokens(self) -> bool:
        return self.student_visual_tokens == self.teacher_visual_tokens

    def lines(self) -> list[str]:
        visual = (
            f"visual tokens: {self.student_visual_tokens} (same for both)"
            if self.same_visual_tokens
            else f"visual tokens: student {self.student_visual_tokens}, teacher {self.teacher_visual_tokens} "
            "(fine for logit KD; IVA needs them equal or EM-KD matching)"
        )
        return [f"shared vocabulary: {self.vocab_size} tokens, same chat template and image token", visual]


def _first_vocab_difference(student: dict[str, int], teacher: dict[str, int]) -> str:
    for token in sorted(set(student) | set(teacher), key=lambda t: student.get(t, teacher.get(t, 0))):
        if student.get(token) != teacher.get(token):
            return f"token {token!r}: student id {student.get(token)}, teacher id {teacher.get(token)}"
    return "none"


def check_pair(
    student_config: Any, student_processor: Any, teacher_config: Any, teacher_processor: Any
) -> PairReport:
    """Raise PairError naming the first incompatibility; return what was found otherwise."""
    s_tok, t_tok = student_processor.tokenizer, teacher_processor.tokenizer
    s_vocab, t_vocab = s_tok.get_vocab(), t_tok.get_vocab()
    if s_vocab != t_vocab:
        raise PairError(
            f"teacher and student vocabularies differ (student {len(s_vocab)} tokens, teacher {len(t_vocab)}; "
            f"first difference: {_first_vocab_difference(s_vocab, t_vocab)}). Logit distillation needs the same "
            "tokenizer: pick a teacher and student from the same LLM family (e.g. Qwen2-7B -> Qwen2-0.5B)."
        )
    if s_tok.chat_template != t_tok.chat_template:
        raise PairError(
            "teacher and student chat templates differ; both models must see the same prompt tokens. "
            "Save the teacher's template with the student's processor (or the reverse)."
        )
    if student_config.image_token_id != teacher_config.image_token_id:
        raise PairError(
            f"image token ids differ (student {student_config.image_token_id}, teacher {teacher_config.image_token_id})"
        )
    vocab_size = len(s_tok)
    for who, config in (("student", student_config), ("teacher", teacher_config)):
        head_rows = config.get_text_config().vocab_size
        if head_rows < vocab_size:
            raise PairError(f"{who} LM head has {head_rows} rows but the tokenizer has {vocab_size} tokens")
    return PairReport(vocab_size, image_token_count(student_config), image_token_count(teacher_config))
