"""Greedy generation with a GGUF export (export/gguf_export.py) on llama.cpp, images through its mtmd library.

    runner = GgufLlava("exports/student-kd-gguf", quant="q4_k_m")
    tokens = runner.generate_one(image, chat_text, max_new_tokens=32)
    runner.processor.tokenizer.decode(tokens)

The chat text is the one the PyTorch model gets (its processor's chat template, one `<image>` where
the picture goes). mtmd splits it at the image: text chunks are decoded by llama-cpp-python's Llama,
the image chunk is encoded by the mmproj file and its embeddings decoded in the same sequence, as
llama-cpp-python's own multimodal chat handlers do. Then one token at a time: the argmax of the
last logits, decoded against the cache. `chat_handler()` gives the same files as llama-cpp-python's
`create_chat_completion` route, for users who want its OpenAI-style API.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def _route_mtmd_logs_through_llama_cpp() -> None:
    """mtmd logs through its own callback; give it llama-cpp-python's, which stays quiet unless verbose."""
    import llama_cpp._logger
    import llama_cpp.mtmd_cpp as mtmd

    mtmd.mtmd_log_set(llama_cpp._logger.llama_log_callback, ctypes.c_void_p(0))
    mtmd.mtmd_helper_log_set(llama_cpp._logger.llama_log_callback, ctypes.c_void_p(0))


def read_gguf_manifest(export_dir: Path) -> dict[str, Any]:
    manifest_file = export_dir / "manifest.json"
    if not manifest_file.is_file():
        raise FileNotFoundError(
            f"{export_dir}: not a GGUF export (no manifest.json; make one with python -m export gguf)"
        )
    manifest = json.loads(manifest_file.read_text())
    if manifest.get("format") != "llava-gguf":
        raise FileNotFoundError(
            f"{export_dir}: manifest.json is not a GGUF export's (format {manifest.get('format')!r})"
        )
    return manifest


def gguf_file_label(name: str, folder: Path, manifest: dict[str, Any]) -> str:
    """ "gguf q4_k_m (folder)", naming the token-embedding type where it was chosen and the vision file's
    type where it is not f16: "gguf q4_k_m, embeddings q4_0, vision q8_0 (folder)"."""
    parts = [f"gguf {name}"]
    embeddings = manifest.get("embedding_type")
    if embeddings and name not in ("f32", "f16"):
        parts.append(f"embeddings {embeddings}")
    vision = manifest.get("vision") or ""
    vision_type = vision.removeprefix("mmproj-").removesuffix(".gguf")
    if vision and vision_type != "f16":
        parts.append(f"vision {vision_type}")
    return ", ".join(parts) + f" ({folder.name})"


def end_of_sequence_ids(export_dir: Path) -> set[int]:
    """generation_config.json's eos_token_id (one id or a list), read without transformers."""
    config_file = export_dir / "generation_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{export_dir}: no generation_config.json (re-export with python -m export gguf)"
        )
    eos = json.loads(config_file.read_text()).get("eos_token_id")
    if eos is None:
        raise ValueError(f"{config_file}: no eos_token_id, so generation could not stop")
    return set(eos if isinstance(eos, list) else [eos])


def image_text(export_dir: Path) -> str:
    """The text that stands for an image in the chat template: processor_config.json's image_token, or
    LlavaProcessor's default where only a preprocessor_config.json was saved."""
    config_file = export_dir / "processor_config.json"
    if config_file.is_file():
        return json.loads(config_file.read_text()).get("image_token", "<image>")
    if (export_dir / "preprocessor_config.json").is_file():
        return "<image>"
    raise FileNotFoundError(
        f"{export_dir}: no processor_config.json (the processor is saved beside the GGUF files)"
    )


class GgufLlava:
    """One quantization of a GGUF export loaded in llama.cpp, with its mmproj when the export has one."""

    def __init__(
        self,
        export_dir: str | Path,
        quant: str | None = None,
        threads: int | None = None,
        context: int = 0,
        f32_cache: bool = False,
        use_gpu: bool = True,
    ) -> None:
        import llama_cpp

        self.path = Path(export_dir)
        self.manifest = read_gguf_manifest(self.path)
        files = self.manifest["files"]
        self.quant = quant or next(iter(files))
        if self.quant not in files:
            raise ValueError(f"{self.path}: no {self.quant!r} file (it has {', '.join(files)})")
        cache = {"type_k": 0, "type_v": 0} if f32_cache else {}  # GGML_TYPE_F32: bit-faithful prompt logits
        self.llm = llama_cpp.Llama(
            model_path=str(self.path / files[self.quant]),
            n_ctx=context,
            n_threads=threads,
            n_gpu_layers=-1 if use_gpu else 0,
            verbose=False,
            **cache,
        )
        self.eos_ids = end_of_sequence_ids(self.path)
        self.image_text = image_text(self.path)
        self.mtmd = None
        self.mmproj = self.manifest.get("vision")
        if self.mmproj:
            self.mtmd = self._open_mmproj(threads or self.llm.n_threads, use_gpu)

    def _open_mmproj(self, threads: int, use_gpu: bool) -> Any:
        import llama_cpp.mtmd_cpp as mtmd

        _route_mtmd_logs_through_llama_cpp()
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = threads
        params.print_timings = False
        context = mtmd.mtmd_init_from_file(str(self.path / self.mmproj).encode(), self.llm.model, params)
        if not context:
            raise ValueError(f"{self.path / self.mmproj}: llama.cpp's mtmd could not load it")
        self.llm._stack.callback(mtmd.mtmd_free, context)
        return context

    @cached_property
    def processor(self) -> Any:
        """The checkpoint's transformers processor, loaded on first use (it imports torch; generating
        needs only llama.cpp, numpy and Pillow, so a deployment's memory holds no more than those)."""
        from distill.modeling import load_processor

        return load_processor(self.path)

    @property
    def vocab_size(self) -> int:
        return self.llm.n_vocab()

    def weight_files(self) -> list[Path]:
        """The language-model file in use and the mmproj file."""
        return [self.path / name for name in (self.manifest["files"][self.quant], self.mmproj) if name]

    def last_logits(self) -> np.ndarray:
        import llama_cpp

        pointer = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.vocab_size,)).copy()

    def _bitmap(self, image: Image.Image) -> Any:
        import llama_cpp.mtmd_cpp as mtmd

        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
        buffer = (ctypes.c_uint8 * rgb.size).from_buffer_copy(rgb.tobytes())
        return mtmd.mtmd_bitmap_init(image.width, image.height, buffer)

    def image_token_count(self) -> int:
        """Positions one image takes in the prompt, as mtmd tokenises it (every image is resized alike)."""
        import llama_cpp.mtmd_cpp as mtmd

        if self.mtmd is None:
            raise ValueError(f"{self.path}: this GGUF export has no mmproj file, so it cannot read images")
        chunks = self._chunks([Image.new("RGB", (8, 8))], self.image_text)
        try:
            return sum(
                mtmd.mtmd_input_chunk_get_n_tokens(c) for c, kind in self._iterate(chunks) if kind == "image"
            )
        finally:
            mtmd.mtmd_input_chunks_free(chunks)

    def image_embeddings(self, image: Image.Image) -> np.ndarray:
        """The mmproj's output for one image: (image tokens, LM width), as the LM receives it."""
        import llama_cpp.mtmd_cpp as mtmd

        chunks = self._chunks([image], self.image_text)
        try:
            chunk = next(c for c, kind in self._iterate(chunks) if kind == "image")
            if mtmd.mtmd_encode_chunk(self.mtmd, chunk) != 0:
                raise RuntimeError("llama.cpp's mtmd failed to encode the image")
            tokens = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
            width = self.llm.n_embd()
            flat = np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(self.mtmd), shape=(tokens * width,))
            return flat.reshape(tokens, width).copy()
        finally:
            mtmd.mtmd_input_chunks_free(chunks)

    def _chunks(self, images: list[Image.Image], text: str) -> Any:
        """mtmd's chunks of the prompt: text runs and one image chunk per image, in the prompt's order."""
        import llama_cpp.mtmd_cpp as mtmd

        if images and self.mtmd is None:
            raise ValueError(f"{self.path}: this GGUF export has no mmproj file, so it cannot read images")
        self.refuse_media_marker(text)
        if text.count(self.image_text) != len(images):
            raise ValueError(
                f"the prompt has {text.count(self.image_text)} {self.image_text} for {len(images)} images"
            )
        encoded = text.replace(self.image_text, mtmd.mtmd_default_marker().decode()).encode()
        prompt = mtmd.mtmd_input_text()
        prompt.text, prompt.text_len = encoded, len(encoded)
        prompt.add_special, prompt.parse_special = False, True
        bitmaps = [self._bitmap(i) for i in images]
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            array = (mtmd.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
            status = mtmd.mtmd_tokenize(self.mtmd, chunks, ctypes.byref(prompt), array, len(bitmaps))
            if status != 0:
                mtmd.mtmd_input_chunks_free(chunks)
                raise ValueError(f"llama.cpp's mtmd could not tokenize the prompt (status {status})")
        finally:
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)
        return chunks

    @staticmethod
    def refuse_media_marker(text: str) -> None:
        """mtmd reads its marker as an image wherever it stands: typed into a prompt, it is refused."""
        import llama_cpp.mtmd_cpp as mtmd

        marker = mtmd.mtmd_default_marker().decode()
        if marker in text:
            raise ValueError(f"the text holds {marker!r}, which llama.cpp reserves for images")

    def _iterate(self, chunks: Any) -> Iterator[tuple[Any, str]]:
        import llama_cpp.mtmd_cpp as mtmd

        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            kind = mtmd.mtmd_input_chunk_get_type(chunk)
            yield chunk, "text" if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT else "image"

    def prompt_pass(self, images: Image.Image | list[Image.Image] | None, text: str) -> np.ndarray:
        """Decode the prompt (one image, a list of images in the order of their markers, or none) from an
        empty cache; return the next-token logits after it."""
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd

        images = [] if images is None else [images] if isinstance(images, Image.Image) else list(images)
        self.llm.reset()
        self.llm._ctx.kv_cache_clear()
        if self.mtmd is None and not images:
            tokens = self.llm.tokenize(text.encode(), add_bos=False, special=True)
            if len(tokens) >= self.llm.n_ctx():
                raise ValueError(
                    f"the prompt is {len(tokens)} tokens; the model's context is {self.llm.n_ctx()}"
                )
            self.llm.eval(tokens)
            return self.last_logits()
        chunks = self._chunks(images, text)
        try:
            needed = mtmd.mtmd_helper_get_n_tokens(chunks)
            if needed >= self.llm.n_ctx():
                raise ValueError(f"the prompt is {needed} tokens; the model's context is {self.llm.n_ctx()}")
            pieces = list(self._iterate(chunks))
            if pieces[-1][1] != "text":
                raise ValueError(
                    "the prompt must end with text after the image (the chat template's reply header)"
                )
            for chunk, kind in pieces:
                if kind == "text":
                    count = ctypes.c_size_t()
                    pointer = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                    self.llm.eval([pointer[j] for j in range(count.value)])
                    continue
                past = llama_cpp.llama_pos(0)
                status = mtmd.mtmd_helper_eval_chunk_single(
                    self.mtmd,
                    self.llm.ctx,
                    chunk,
                    self.llm.n_tokens,
                    0,
                    self.llm.n_batch,
                    False,
                    ctypes.byref(past),
                )
                if status != 0:
                    raise RuntimeError(f"llama.cpp could not decode the image (status {status})")
                self.llm.n_tokens = past.value
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
        return self.last_logits()

    def stream(
        self, image: Image.Image | None, text: str, max_new_tokens: int, ignore_eos: bool = False
    ) -> Iterator[int]:
        """Greedy tokens one at a time, the first as soon as the prompt is decoded."""
        logits = self.prompt_pass(image, text)
        for step in range(max_new_tokens):
            if ignore_eos:
                logits[list(self.eos_ids)] = -np.inf
            token = int(np.argmax(logits))
            if token in self.eos_ids:
                return
            yield token
            if step + 1 < max_new_tokens:
                if self.llm.n_tokens >= self.llm.n_ctx():  # generation ends with the context
                    return
                logits = self.step(token)

    def step(self, token: int) -> np.ndarray:
        """Decode one more token against the cache; return the next-token logits."""
        if self.llm.n_tokens >= self.llm.n_ctx():
            raise ValueError(f"the context of {self.llm.n_ctx()} tokens is full")
        self.llm.eval([token])
        return self.last_logits()

    def generate_one(
        self, image: Image.Image | None, text: str, max_new_tokens: int, ignore_eos: bool = False
    ) -> list[int]:
        return list(self.stream(image, text, max_new_tokens, ignore_eos))

    def generate(
        self, images: list, texts: list[str], max_new_tokens: int, ignore_eos: bool = False
    ) -> list[list[int]]:
        return [self.generate_one(i, t, max_new_tokens, ignore_eos) for i, t in zip(images, texts)]

    def answer(self, images: list, texts: list[str], max_new_tokens: int) -> list[str]:
        decode = self.processor.tokenizer.decode
        return [
            decode(tokens, skip_special_tokens=True).strip()
            for tokens in self.generate(images, texts, max_new_tokens)
        ]

    def chat_handler(self) -> Any:
        """llama-cpp-python's MTMD chat handler on this export's mmproj, reading the embedded chat template."""
        return llava_chat_handler(self.path / self.mmproj, self.image_text, verbose=False)


def llava_chat_handler(mmproj: Path, image_text: str = "<image>", verbose: bool = False) -> Any:
    """A `MTMDChatHandler` whose image parts render as the checkpoint's own image text.

    llama-cpp-python's handler turns an image part into a text part holding mtmd's marker, which a
    LLaVA template (an `{"type": "image"}` part -> "<image>\\n") would drop; here the part stays an
    image part, the template writes the checkpoint's image text, and that text becomes the marker.
    """
    from llama_cpp.llama_chat_format import MTMDChatHandler

    class LlavaTemplateChatHandler(MTMDChatHandler):
        @staticmethod
        def _convert_content_part_for_template(part: Any, media_marker: str) -> Any:
            if isinstance(part, dict) and part.get("type") == "image_url":
                return {"type": "image"}
            return part

        def _postprocess_template_text(self, text: str, image_urls: list[str], media_marker: str) -> str:
            return text.replace(image_text, media_marker)

    _route_mtmd_logs_through_llama_cpp()
    return LlavaTemplateChatHandler(clip_model_path=str(mmproj), verbose=verbose)
