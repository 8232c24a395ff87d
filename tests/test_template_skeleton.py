"""One render per conversation (distill/template_skeleton.py) gives exactly the spans of rendering
every prefix, for several chat templates, and falls back where a template does not lay contents in
verbatim."""

import copy
import json

import numpy as np
import pytest

from distill.conversation import ConversationEncoder, to_messages
from tests.conftest import LLAVA_15_TEMPLATE, LLAVA_QWEN_TEMPLATE

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
VICUNA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + ' ' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}"
    "{% else %}{{ 'ASSISTANT: ' + message['content'] + '</s>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
REFUSING_TEMPLATE = (  # refuses contents it does not expect, placeholders among them
    "{% for message in messages %}{% if '\ue000' in message['content'] %}{{ raise_exception('odd content') }}"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TRIMMING_TEMPLATE = (  # lays the contents in trimmed: the skeleton cannot apply to padded contents
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] | trim }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def conversations(shapes):
    records = json.loads((shapes / "train.json").read_text())
    extra = [
        [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "<image>\nWhat color is the circle?"},
            {"from": "gpt", "value": "  red \n"},
            {"from": "human", "value": "Where is it?  "},
            {"from": "gpt", "value": "top left"},
        ],
        [{"from": "human", "value": "Say nothing."}, {"from": "gpt", "value": ""}],
        [
            {"from": "human", "value": "a \ue000 b"},
            {"from": "gpt", "value": "c"},
        ],  # holds the placeholder mark
    ]
    return [record["conversations"] for record in records] + extra


def exact(encoder, conversation):
    """The spans from rendering every prefix (what the encoder did before skeletons)."""
    messages = to_messages(conversation)
    return encoder.exact_spans(messages, encoder.render(messages))


@pytest.mark.parametrize(
    "template",
    [None, LLAMA3_TEMPLATE, VICUNA_TEMPLATE, TRIMMING_TEMPLATE, LLAVA_15_TEMPLATE, LLAVA_QWEN_TEMPLATE],
)
def test_skeleton_spans_equal_those_of_rendering_every_prefix(tokenizer, shapes, template):
    tokenizer = copy.deepcopy(tokenizer)
    if template is not None:
        tokenizer.chat_template = template
    encoder = ConversationEncoder(tokenizer)
    for conversation in conversations(shapes):
        messages = to_messages(conversation)
        assert encoder.spans(messages, encoder.render(messages)) == exact(encoder, conversation)
    used = [roles for roles, skeleton in encoder.skeletons.skeletons.items() if skeleton is not None]
    assert used  # the skeleton was used, not only the fallback


def test_a_template_that_refuses_the_placeholders_falls_back_to_every_prefix(tokenizer, shapes):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = REFUSING_TEMPLATE
    encoder = ConversationEncoder(tokenizer)
    for conversation in conversations(shapes)[:20]:
        messages = to_messages(conversation)
        assert encoder.spans(messages, encoder.render(messages)) == exact(encoder, conversation)
    assert not any(encoder.skeletons.skeletons.values())


def test_one_render_per_conversation_once_the_roles_are_known(tokenizer, shapes):
    tokenizer = copy.deepcopy(tokenizer)
    encoder = ConversationEncoder(tokenizer)
    renders = []
    original = tokenizer.apply_chat_template

    def counting(*args, **kwargs):
        renders.append(1)
        return original(*args, **kwargs)

    tokenizer.apply_chat_template = counting
    four_turns = [
        [
            {"from": "human", "value": f"<image>\nQuestion {i}?"},
            {"from": "gpt", "value": f"answer {i}"},
            {"from": "human", "value": f"And {i}?"},
            {"from": "gpt", "value": f"more {i}"},
        ]
        for i in range(20)
    ]
    encoder.encode(four_turns[0])  # builds and checks the skeleton of these roles
    renders.clear()
    for conversation in four_turns[1:]:
        encoder.encode(conversation)
    assert len(renders) == len(four_turns) - 1  # rendering every prefix took 6 per conversation


def test_a_skeleton_whose_spans_disagree_is_dropped(tokenizer, shapes):
    encoder = ConversationEncoder(copy.deepcopy(tokenizer))
    conversation = conversations(shapes)[0]
    messages = to_messages(conversation)
    text = encoder.render(messages)
    roles = tuple(m["role"] for m in messages)
    encoder.skeletons.prefixes(messages, text)  # builds the skeleton
    skeleton = encoder.skeletons.skeletons[roles]
    skeleton.generation_prompt_ends[:] = [-1 if n < 0 else n + 1 for n in skeleton.generation_prompt_ends]
    assert encoder.spans(messages, text) == exact(encoder, conversation)
    assert encoder.skeletons.skeletons[roles] is None


def reference_encoding(encoder, conversation):
    """ids, labels and instruction mask token by token from the exact spans."""
    messages = to_messages(conversation)
    text = encoder.render(messages)
    replies, questions = exact(encoder, conversation)
    encoding = encoder.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, starts = list(encoding["input_ids"]), [start for start, _ in encoding["offset_mapping"]]
    supervised = [any(a <= s < b for a, b in replies) for s in starts]
    instruction = [any(a <= s < b for a, b in questions) for s in starts]
    if encoder.bos_token is not None and not text.startswith(encoder.bos_token):
        ids, supervised, instruction = (
            [encoder.tokenizer.bos_token_id, *ids],
            [False, *supervised],
            [False, *instruction],
        )
    labels = [i if s else -100 for i, s in zip(ids, supervised)]
    return np.asarray(ids, np.int32), np.asarray(labels, np.int32), np.asarray(instruction, bool)


@pytest.mark.parametrize(
    ("template", "bos"),
    [
        (None, None),
        (LLAMA3_TEMPLATE, "<|im_start|>"),
        (VICUNA_TEMPLATE, "<|im_start|>"),
        (LLAVA_15_TEMPLATE, "<|im_start|>"),  # contents as lists of parts (llava-hf's)
        (LLAVA_QWEN_TEMPLATE, None),  # and a generation prompt unlike the header before a reply
    ],
)
def test_encodings_equal_the_token_by_token_reference(tokenizer, shapes, template, bos):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = template or tokenizer.chat_template
    tokenizer.bos_token = bos  # Vicuna's template does not write it: the encoder puts it first
    encoder = ConversationEncoder(tokenizer)
    for conversation in conversations(shapes):
        got, want = encoder.encode_with_instruction(conversation), reference_encoding(encoder, conversation)
        for a, b in zip(got, want):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
