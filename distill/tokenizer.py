"""The tiny default's tokenizer: byte-level BPE with Qwen2's pre-tokenizer and a ChatML template.

Trained with Hugging Face `tokenizers` on the synthetic world's text, saved as a fast tokenizer
that `AutoTokenizer` / `AutoProcessor` load, so every later stage (GGUF export with pre-tokenizer
"qwen2" included) treats it like a real Qwen2 tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from distill.conversation import ROLES

# Qwen2's pre-tokenizer split (tokenizer.json of Qwen/Qwen2-0.5B); GGUF calls it "qwen2".
QWEN2_PRETOKENIZER_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END, IMAGE_TOKEN]

# ChatML. Content is a string (with "<image>" placeholders) or a list of {"type": "image"} /
# {"type": "text", "text": ...} parts, as transformers processors pass it.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chatml_turn_text(speaker: str, value: str) -> str:
    """A LLaVA turn as the ChatML template writes it between `<|im_start|>` and `<|im_end|>`: the role
    name, a newline, the text. Training on this text, not the bare turn, gives the role names their own
    tokens ("assistant" was 8 tokens of every example otherwise)."""
    return f"{ROLES[speaker]}\n{value}"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on `texts`; the result has the special tokens first (ids 0..3)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZER_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        chat_template=CHATML_TEMPLATE,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
