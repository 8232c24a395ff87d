"""The language model of a LLaVA checkpoint as a llama.cpp GGUF file, written with gguf-py.

    write_text_gguf(model, tokenizer, Path("exports/student-kd-gguf/model-f16.gguf"), "f16")

llama.cpp's own converter rejects tokenizers whose pre-tokenizer hash it does not know (the tiny
default's among them), so the file is written directly: architecture metadata from the text
config, the byte-level BPE vocabulary (tokens, types, merges; ids past the tokenizer padded as
llama.cpp's converter pads them), special-token ids, the chat template, and every tensor under
llama.cpp's name (gguf-py's tensor map for the architecture). Norms and biases stay f32; with
"f16" the matrices are f16. A tied LM head is left out: llama.cpp then reads the embedding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

ARCHITECTURES = {"qwen2": "QWEN2", "qwen3": "QWEN3", "llama": "LLAMA"}
PRE_TOKENIZERS = {"qwen2": "qwen2", "qwen3": "qwen2", "llama": "llama-bpe"}


def architecture(text_config: Any) -> Any:
    import gguf

    name = ARCHITECTURES.get(text_config.model_type)
    if name is None:
        raise ValueError(
            f"GGUF export supports {', '.join(ARCHITECTURES)} language models, not {text_config.model_type!r}"
        )
    return getattr(gguf.MODEL_ARCH, name)


def check_plain_rope(text_config: Any) -> None:
    """The writer stores RoPE's base frequency only; a scaled RoPE (Llama-3.1's llama3, YaRN, linear) would be
    dropped without a word, so it is refused."""
    rope = getattr(text_config, "rope_parameters", None) or getattr(text_config, "rope_scaling", None) or {}
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind != "default":
        raise ValueError(
            f"GGUF export writes plain RoPE; this model scales it ({kind!r}): convert it with llama.cpp's "
            "convert_hf_to_gguf.py instead"
        )


def check_byte_level_bpe(tokenizer: Any) -> None:
    """The writer declares a byte-level BPE vocabulary (GPT-2, Qwen, Llama-3 style); a SentencePiece-
    style BPE (Metaspace, byte fallback: Llama-2, Vicuna) would be tokenized differently by llama.cpp."""
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    model = data["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"GGUF export writes byte-level BPE tokenizers; this one is {model.get('type')!r}")
    if model.get("byte_fallback") or "ByteLevel" not in json.dumps(data.get("pre_tokenizer")):
        raise ValueError(
            "GGUF export writes byte-level BPE tokenizers; this one is SentencePiece-style (Metaspace or "
            "byte fallback): convert it with llama.cpp's convert_hf_to_gguf.py instead"
        )


def vocabulary(tokenizer: Any, rows: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens by id (padded to the LM head's rows), their llama.cpp types, and the BPE merges."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(rows):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    check_byte_level_bpe(tokenizer)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, [int(t) for t in types], merges


def tensor_type(name: str, array: np.ndarray, outtype: str) -> np.ndarray:
    """f16 for matrices when asked; norms, biases and 1-D tensors stay f32 (llama.cpp's choice)."""
    if outtype == "f16" and array.ndim == 2:
        return array.astype(np.float16)
    return array.astype(np.float32)


def write_text_gguf(model: Any, tokenizer: Any, out: Path, outtype: str = "f16") -> Path:
    import gguf

    text = model.config.get_text_config()
    arch = architecture(text)
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch])
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    rope = getattr(text, "rope_parameters", None) or {"rope_theta": getattr(text, "rope_theta", 10000.0)}
    writer.add_name(Path(out).stem)
    writer.add_context_length(text.max_position_embeddings)
    writer.add_embedding_length(text.hidden_size)
    writer.add_block_count(text.num_hidden_layers)
    writer.add_feed_forward_length(text.intermediate_size)
    writer.add_head_count(text.num_attention_heads)
    writer.add_head_count_kv(text.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(text.rms_norm_eps))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.ALL_F32)
    tokens, types, merges = vocabulary(tokenizer, text.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZERS[text.model_type])
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    eos = model.generation_config.eos_token_id
    writer.add_eos_token_id(eos[0] if isinstance(eos, list) else eos)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_add_bos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    names = gguf.get_tensor_name_map(arch, text.num_hidden_layers)
    tied = bool(getattr(text, "tie_word_embeddings", False))
    for name, tensor in text_state(model).items():
        if name == "lm_head.weight" and tied:
            continue
        base, suffix = name.rsplit(".", 1)
        mapped = names.get_name(base)
        if mapped is None:
            raise ValueError(f"no llama.cpp name for tensor {name!r} ({text.model_type})")
        writer.add_tensor(f"{mapped}.{suffix}", tensor_type(name, tensor, outtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def text_state(model: Any) -> dict[str, np.ndarray]:
    """The LLM's tensors under Hugging Face causal-LM names (model.layers.N..., lm_head.weight)."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("model.language_model."):
            state["model." + name.removeprefix("model.language_model.")] = tensor.float().numpy()
        elif name == "lm_head.weight":
            state[name] = tensor.float().numpy()
    return state
