"""demo/: the image chat answers like the engine, in process and through the API, follow-ups reuse the
image, and a real headless Chromium can upload an image, ask and read the streamed answer."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from demo.app import build_demo, respond, synthetic_examples
from demo.chat import ApiChat, LocalChat
from serve.app import Settings, create_app
from serve.engines import open_engine
from serve.sampling import Sampler

CHROMIUM = Path("/usr/bin/chromium")
# root needs --no-sandbox; the rest keep Chromium from calling home, which a closed network (CI) refuses
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def engine(student_dir):
    return open_engine(student_dir)


@pytest.fixture(scope="module")
def example(shapes):
    return synthetic_examples(shapes / "test.json", count=1)[0]


def engine_answer(engine, image_path, question):
    from PIL import Image

    image = Image.open(image_path).convert("RGB")
    prompt = engine.prompt([{"role": "user", "content": f"{engine.image_text}\n{question}"}], [image])
    return "".join(p.text for p in engine.stream(prompt, Sampler(0.0), 256))


def test_a_turn_streams_the_engines_answer_and_shows_its_speed(engine, example):
    image_path, question = example
    turns = list(respond(LocalChat(engine), {"text": question, "files": [str(image_path)]}, []))
    chat, box, stats = turns[-1]
    assert chat[0]["content"] == {"path": str(image_path)} and chat[1]["content"] == question
    assert chat[-1] == {"role": "assistant", "content": engine_answer(engine, image_path, question)}
    assert "time to first token" in stats and "ms" in stats and box == {"text": "", "files": []}
    follow_up = list(respond(LocalChat(engine), {"text": "And its shape?", "files": []}, chat))[-1][0]
    assert follow_up[-2]["content"] == "And its shape?" and follow_up[-1]["content"]
    assert list(respond(LocalChat(engine), {"text": "  ", "files": []}, chat))[-1][2].startswith(
        "Type a question"
    )


def test_the_api_backend_gives_the_same_answer(engine, example):
    image_path, question = example
    api = ApiChat(
        "http://testserver/v1", "k", http_client=TestClient(create_app(engine, Settings(api_key="k")))
    )
    chat, _, stats = list(respond(api, {"text": question, "files": [str(image_path)]}, []))[-1]
    assert chat[-1]["content"] == engine_answer(engine, image_path, question)
    assert "time to first token" in stats


def test_the_history_gradio_hands_back_reaches_the_model(engine, example):
    """Gradio 6's Chatbot returns its value as typed parts; the earlier turns must survive the trip."""
    import gradio as gr

    from demo.app import text_history

    image_path, question = example
    chat = list(respond(LocalChat(engine), {"text": question, "files": [str(image_path)]}, []))[-1][0]
    chat[-1]["content"] = "A red circle."  # (the tiny test student may answer with blank lines only)
    bot = gr.Chatbot()
    posted = bot.postprocess(chat)
    returned = bot.preprocess(type(posted).model_validate(posted.model_dump()))
    history, last_image = text_history(returned)
    assert [m["content"] for m in history] == [question, chat[-1]["content"]]
    assert last_image == str(image_path)


def test_a_long_conversation_drops_its_oldest_turns_and_a_refusal_is_shown(engine, example):
    image_path, question = example
    long_ago = [{"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "ok " * 60}]
    history = long_ago * 6  # far past the tiny model's 512-token context
    for chat in (
        LocalChat(engine, max_tokens=8),
        ApiChat("http://testserver/v1", http_client=TestClient(create_app(engine)), max_tokens=8),
    ):
        answer, stats = list(chat.stream(history, question, None))[-1]
        assert answer and stats["tokens"] >= 1
    turns = list(
        respond(LocalChat(engine), {"text": "what is <image> here?", "files": [str(image_path)]}, [])
    )
    chat, _, stats = turns[-1]
    assert stats.startswith("No answer:") and chat[-1]["role"] == "user"


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium (apt install chromium)")
def test_a_headless_browser_uploads_an_image_asks_and_reads_the_answer(engine, example):
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    image_path, question = example
    demo = build_demo(LocalChat(engine))
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
            page = browser.new_page()
            page.goto(demo.local_url)
            page.locator("#ask input[type=file]").set_input_files(str(image_path))
            page.locator("#ask textarea").fill(question)
            page.locator("#ask textarea").press("Enter")
            page.wait_for_function(
                "() => document.querySelector('#stats') && document.querySelector('#stats').innerText.includes('time to first token')",
                timeout=60_000,
            )
            answer = page.locator("#chat .message.bot, #chat [data-testid=bot]").last.inner_text()
            browser.close()
    finally:
        demo.close()
    assert engine_answer(engine, image_path, question).strip() in answer
