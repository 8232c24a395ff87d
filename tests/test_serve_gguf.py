"""A GGUF export served without PyTorch or transformers: its chat template, token counts and text agree
with the processor's, and the app answers an image question in a process where both are unimportable
(the Gradio demo is built there too, its examples read)."""

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from distill.modeling import load_processor
from export.gguf_export import export_gguf
from serve.chat_text import TransformersChatText
from serve.engines import open_engine
from tests.conftest import LLAVA_15_TEMPLATE

pytest.importorskip("llama_cpp")

# a Llama-3-style template: the bos token, a system turn, a loop with `loop.first`
LLAMA3_STYLE = (
    "{{ bos_token }}{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] | trim + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CONVERSATIONS = [
    [{"role": "user", "content": "<image>\nWhat color is the circle?"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "<image>\nHow many shapes?"},
        {"role": "assistant", "content": "Three."},
        {"role": "user", "content": "  And which is red? 🦙 "},
    ],
    [{"role": "user", "content": "no picture, only <|im_end|> typed as text"}],
]


@pytest.fixture(scope="module")
def gguf_export(student_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "student"
    export_gguf(student_dir, out, ["f32"])
    return out


@pytest.fixture(scope="module")
def bos_template_export(student_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bos")
    model = shutil.copytree(student_dir, root / "model")
    processor = load_processor(model)
    processor.tokenizer.bos_token = "<|endoftext|>"
    processor.tokenizer.chat_template = LLAMA3_STYLE
    processor.chat_template = LLAMA3_STYLE
    processor.save_pretrained(model)
    export_gguf(model, root / "gguf", ["f32"])
    return model, root / "gguf"


@pytest.fixture(scope="module")
def parts_template_export(student_dir, tmp_path_factory):
    """LLaVA-1.5's template, which reads contents as lists of parts, on the processor alone (llava-hf's layout)."""
    root = tmp_path_factory.mktemp("parts")
    model = shutil.copytree(student_dir, root / "model")
    processor = load_processor(model)
    processor.tokenizer.chat_template = None
    processor.chat_template = LLAVA_15_TEMPLATE
    processor.save_pretrained(model)
    export_gguf(model, root / "gguf", ["f32"])
    return model, root / "gguf"


def pair(model_dir, export_dir):
    engine = open_engine(export_dir)
    return TransformersChatText(load_processor(model_dir)), engine.chat


@pytest.mark.parametrize("which", ["chatml", "bos-and-system", "llava-1.5-parts"])
def test_the_gguf_text_side_renders_counts_and_decodes_as_transformers(
    which, student_dir, gguf_export, bos_template_export, parts_template_export
):
    exports = {"chatml": (student_dir, gguf_export), "bos-and-system": bos_template_export}
    reference, chat = pair(*exports.get(which, parts_template_export))
    if which == "bos-and-system":  # the template really reads the bos token and adds the system turn
        assert reference.render(CONVERSATIONS[0]).startswith("<|endoftext|><|im_start|>system\nYou are")
    if which == "llava-1.5-parts":  # the question is in the prompt, not dropped with its string content
        assert reference.render(CONVERSATIONS[0]) == "USER: <image>\nWhat color is the circle? ASSISTANT:"
    assert chat.image_text == reference.image_text
    assert chat.image_tokens() == reference.image_tokens()
    for messages in CONVERSATIONS:
        text = reference.render(messages)
        assert chat.render(messages) == text
        assert chat.encode(text) == reference.encode(text)
    ids = reference.encode(reference.render(CONVERSATIONS[1]))
    assert chat.decode(ids) == reference.decode(ids)  # special tokens (the bos, <|im_end|>) left out
    llama = reference.encode("🦙")
    assert len(llama) > 1 and chat.decode(llama[:-1]).endswith("\ufffd")  # an incomplete character


def test_a_gguf_export_is_served_with_torch_and_transformers_unimportable(gguf_export, shapes):
    picture = next((shapes / "images" / "test").glob("*.png"))
    script = textwrap.dedent(
        f"""
        import base64, json, sys
        from pathlib import Path

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers"):
                    raise ImportError(f"{{name}} is not installed here")

        sys.meta_path.insert(0, Refuse())
        from fastapi.testclient import TestClient
        from serve.app import Settings, create_app
        from serve.engines import open_engine

        engine = open_engine({str(gguf_export)!r})
        url = "data:image/png;base64," + base64.b64encode(open({str(picture)!r}, "rb").read()).decode()
        content = [{{"type": "image_url", "image_url": {{"url": url}}}}, {{"type": "text", "text": "What color is the circle?"}}]
        reply = TestClient(create_app(engine, Settings())).post(
            "/v1/chat/completions",
            json={{"model": engine.name, "messages": [{{"role": "user", "content": content}}], "max_tokens": 8}},
        )
        from demo.app import build_demo, synthetic_examples  # the Gradio demo on the same engine
        from demo.chat import LocalChat

        examples = synthetic_examples(Path({str(shapes / "test.json")!r}))
        build_demo(LocalChat(engine), examples)
        print(json.dumps({{"status": reply.status_code, "body": reply.json(), "examples": len(examples),
                          "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 200, result["body"]
    assert not result["torch"] and not result["transformers"] and result["examples"] > 0
    usage = result["body"]["usage"]
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 16  # the image's tokens counted
