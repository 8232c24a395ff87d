"""The Gradio image chat: upload an image, ask, watch the answer stream, with TTFT and tokens/s per answer.

    demo = build_demo(LocalChat(open_engine("runs/tiny/student-kd/final")), examples)
    demo.launch()                                  # what `python -m demo` does

`respond` is the whole chat turn and is what the tests call: it takes the multimodal textbox's value
({"text", "files"}) and the chat so far, and yields the chat with the answer growing, then the stats
line. A follow-up question without a new image asks about the last image shown.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

STATS_IDLE = "Ask about an image: the answer streams, then its time to first token and speed show here."


def stats_line(stats: dict[str, Any]) -> str:
    ttft, speed, tokens = stats.get("ttft_ms"), stats.get("tokens_per_s"), stats.get("tokens")
    parts = [f"time to first token **{ttft:.0f} ms**" if ttft is not None else "no tokens"]
    if speed is not None:
        parts.append(f"**{speed:.1f} tokens/s**")
    if tokens is not None:
        parts.append(f"{tokens} tokens")
    return " · ".join(parts)


def text_history(chat: list[dict[str, Any]]) -> tuple[list[dict[str, str]], str | None]:
    """The earlier turns as text messages for the model, and the path of the last image shown.

    Gradio 6's Chatbot hands its value back as parts ([{"type": "text", "text"}, {"type": "file", "file":
    {"path"}}]); the value this module puts in it has plain strings and {"path"} dicts: both are read."""
    messages, last_image = [], None
    for message in chat:
        content = message["content"]
        parts = content if isinstance(content, (list, tuple)) else [content]
        texts = []
        for part in parts:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and (part.get("type") == "text" or "text" in part):
                texts.append(part.get("text") or "")
            elif isinstance(part, dict):
                last_image = part.get("path") or (part.get("file") or {}).get("path") or last_image
        if any(texts):
            messages.append({"role": message["role"], "content": "".join(texts)})
    return messages, last_image


def respond(
    chat_backend: Any, message: dict[str, Any], chat: list[dict[str, Any]]
) -> Iterator[tuple[list, dict, str]]:
    question = (message.get("text") or "").strip()
    files = message.get("files") or []
    history, last_image = text_history(chat or [])
    image_path = files[-1] if files else None
    if isinstance(image_path, dict):
        image_path = image_path.get("path")
    if not question:
        yield chat, {"text": "", "files": []}, "Type a question (and add an image)."
        return
    new_image = image_path is not None
    image_path = image_path or last_image
    try:
        image = Image.open(image_path).convert("RGB") if image_path else None
    except OSError as error:
        yield chat, {"text": "", "files": []}, f"That file is not an image I can read: {error}"
        return
    chat = list(chat or [])
    if new_image:
        chat.append({"role": "user", "content": {"path": str(image_path)}})
    chat.append({"role": "user", "content": question})
    chat.append({"role": "assistant", "content": ""})
    # earlier turns go as text; the image (new, or the last one shown) goes with this question
    final: dict[str, Any] = {}
    try:
        for answer, stats in chat_backend.stream(history, question, image):
            chat[-1] = {"role": "assistant", "content": answer}
            final = stats
            yield chat, {"text": "", "files": []}, "…"
    except Exception as error:  # a refused question, a server that went away: said, not raised
        chat = chat[:-1] if not chat[-1]["content"] else chat
        yield chat, {"text": "", "files": []}, f"No answer: {error}"
        return
    yield chat, {"text": "", "files": []}, stats_line(final)


def build_demo(chat_backend: Any, examples: list[list[Any]] | None = None) -> Any:
    import gradio as gr

    with gr.Blocks(title="edge-llava chat") as demo:
        gr.Markdown(f"### Image chat with {chat_backend.name}")
        chatbot = gr.Chatbot(label="chat", height=420, elem_id="chat")
        box = gr.MultimodalTextbox(
            file_types=["image"],
            file_count="single",
            placeholder="Add an image, ask a question, press Enter",
            show_label=False,
            elem_id="ask",
        )
        stats = gr.Markdown(STATS_IDLE, elem_id="stats")
        box.submit(
            lambda m, c: (yield from respond(chat_backend, m, c)), [box, chatbot], [chatbot, box, stats]
        )
        if examples:
            gr.Examples(
                examples=[[{"text": q, "files": [str(p)]}] for p, q in examples],
                inputs=[box],
                label="from the synthetic world",
            )
        gr.Button("Clear").click(lambda: ([], STATS_IDLE), None, [chatbot, stats])
    return demo


def synthetic_examples(data: Path, count: int = 4) -> list[list[Any]]:
    """(image, question) pairs from the held-out split of the synthetic world, one per question family."""
    from distill.records import read_records

    if not data.is_file():
        return []
    chosen, seen = [], set()
    for record in read_records(data):
        family = record.get("family") or record.get("id", "").split("-")[0]
        if "image" not in record or family in seen:
            continue
        seen.add(family)
        question = record["conversations"][0]["value"].replace("<image>", "").strip().split("\n")[0]
        chosen.append([data.parent / record["image"], question])
        if len(chosen) == count:
            break
    return chosen
