"""The vision tower + projector of a LLaVA checkpoint as the mmproj GGUF that llama.cpp's mtmd loads.

    write_mmproj(model, processor, Path("exports/student-kd-gguf/mmproj-f16.gguf"), "f16")   # or f32, q8_0

The file is a `clip`-architecture GGUF with projector type `mlp` (LLaVA-1.5's two linear layers and
a GELU: tensors mm.0 and mm.2), written with gguf-py under the names llama.cpp's
tools/mtmd/clip-impl.h reads (v.patch_embd, v.position_embd, v.blk.N.attn_q/k/v/out, ln1, ln2,
ffn_up, ffn_down, v.class_embd and v.pre_ln for CLIP). What makes llama.cpp compute what
transformers computes:

- the feature layer: LLaVA takes hidden_states[vision_feature_layer] of the tower, before its
  post-layernorm, so the post-layernorm is left out and `clip.vision.feature_layer` names the layer
  (llama.cpp's default is the second-to-last, LLaVA-1.5's choice; the tiny default uses the last);
- the activation: SigLIP's gelu_pytorch_tanh is llama.cpp's `use_gelu` (ggml_gelu, the tanh form);
  CLIP's quick_gelu is llama.cpp's default when neither use_gelu nor use_silu is set;
- the pixels: image mean and std from the processor (SigLIP's 0.5s), the image size and patch size;
- which tokens: CLIP's class token is dropped as LLaVA's "default" strategy drops it; SigLIP has
  none and LLaVA keeps every patch ("full").

llama.cpp pads a non-square image to a square with LLaVA-1.5's grey before resizing; transformers'
SigLIP processor stretches it. Square images (the synthetic world's) give the same pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export.onnx_export import ExportError

# (Hugging Face name inside the vision tower, llama.cpp name); N is the layer index.
TOWER_NAMES = {
    "embeddings.patch_embedding": "v.patch_embd",
    "embeddings.position_embedding": "v.position_embd",
    "pre_layrnorm": "v.pre_ln",
    "encoder.layers.N.self_attn.q_proj": "v.blk.N.attn_q",
    "encoder.layers.N.self_attn.k_proj": "v.blk.N.attn_k",
    "encoder.layers.N.self_attn.v_proj": "v.blk.N.attn_v",
    "encoder.layers.N.self_attn.out_proj": "v.blk.N.attn_out",
    "encoder.layers.N.layer_norm1": "v.blk.N.ln1",
    "encoder.layers.N.layer_norm2": "v.blk.N.ln2",
    "encoder.layers.N.mlp.fc1": "v.blk.N.ffn_up",
    "encoder.layers.N.mlp.fc2": "v.blk.N.ffn_down",
}
PROJECTOR_NAMES = {"linear_1": "mm.0", "linear_2": "mm.2"}
# Tensors LLaVA never uses: the tower's pooling head and the post-layernorm after the feature layer.
UNUSED = ("head.", "post_layernorm.")
# Tower activation -> llama.cpp's use_gelu (ggml_gelu, tanh form: exact GELU within 1e-3) or its quick GELU.
TOWER_ACTIVATIONS = {"gelu_pytorch_tanh": True, "gelu_new": True, "gelu": True, "quick_gelu": False}
SUPPORTED = {("siglip_vision_model", "full"), ("clip_vision_model", "default")}


def feature_layer(config: Any) -> int:
    """LLaVA's vision_feature_layer as the non-negative hidden-state index llama.cpp expects."""
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise ExportError(f"mmproj export takes one vision feature layer, not {layer!r}")
    count = config.vision_config.num_hidden_layers
    return layer if layer >= 0 else count + 1 + layer


def check_vision(config: Any) -> None:
    """Refuse, before anything is written, a tower or token choice llama.cpp's llava graph does not compute."""
    vision = config.vision_config
    key = (vision.model_type, config.vision_feature_select_strategy)
    if key not in SUPPORTED:
        raise ExportError(
            f"mmproj export supports a SigLIP tower with the 'full' strategy or a CLIP tower with 'default'; "
            f"this checkpoint has {key[0]} with {key[1]!r}"
        )
    if vision.hidden_act not in TOWER_ACTIVATIONS:
        raise ExportError(
            f"llama.cpp's clip graph computes {', '.join(TOWER_ACTIVATIONS)}; this tower uses {vision.hidden_act!r}"
        )
    if config.projector_hidden_act != "gelu":
        raise ExportError(
            f"llama.cpp's mlp projector applies GELU; this one uses {config.projector_hidden_act!r}"
        )
    feature_layer(config)


def llama_cpp_name(tower_name: str) -> str | None:
    """llama.cpp's name for a tensor of the tower (None for the unused ones), suffix kept."""
    if tower_name.startswith(UNUSED):
        return None
    if tower_name == "embeddings.class_embedding":
        return "v.class_embd"
    base, suffix = tower_name.rsplit(".", 1)
    parts = base.split(".")
    layer = None
    if base.startswith("encoder.layers."):
        layer = parts[2]
        parts[2] = "N"
    mapped = TOWER_NAMES.get(".".join(parts))
    if mapped is None:
        raise ExportError(f"no llama.cpp name for vision tensor {tower_name!r}")
    return f"{mapped.replace('N', layer) if layer else mapped}.{suffix}"


def vision_state(model: Any) -> dict[str, np.ndarray]:
    """llama.cpp name -> array for the tower and projector, unused tensors left out."""
    state = {}
    for name, tensor in model.state_dict().items():
        array = tensor.float().numpy()
        if name.startswith("model.vision_tower."):
            inner = name.removeprefix("model.vision_tower.").removeprefix("vision_model.")
            mapped = llama_cpp_name(inner)
        elif name.startswith("model.multi_modal_projector."):
            layer, suffix = name.removeprefix("model.multi_modal_projector.").rsplit(".", 1)
            mapped = f"{PROJECTOR_NAMES[layer]}.{suffix}"
        else:
            continue
        if mapped is not None:
            state[mapped] = array
    return swap_ffn_names_if_square(state)


def swap_ffn_names_if_square(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """llama.cpp swaps ffn_up and ffn_down back when ffn_down's input width equals the embedding width
    (old converters wrote them the wrong way round). With a square FFN that test also fires on correct
    names, so there the names are written swapped and llama.cpp's swap restores them."""
    up, down = state.get("v.blk.0.ffn_up.weight"), state.get("v.blk.0.ffn_down.weight")
    if up is None or down is None or up.shape[0] != up.shape[1]:
        return state
    renamed = {}
    for name, array in state.items():
        if ".ffn_up." in name:
            name = name.replace(".ffn_up.", ".ffn_down.")
        elif ".ffn_down." in name:
            name = name.replace(".ffn_down.", ".ffn_up.")
        renamed[name] = array
    return renamed


MMPROJ_TYPES = ("f32", "f16", "q8_0")


def add_stored(writer: Any, name: str, array: np.ndarray, outtype: str) -> None:
    """Norms, biases and class token in f32; the convolution kernel and position table in f16 unless f32
    is asked; the matrices in the asked type (q8_0 by gguf-py's reference quantizer, which is llama.cpp's)."""
    import gguf

    if array.ndim < 2 or outtype == "f32":
        writer.add_tensor(name, array.astype(np.float32))
    elif outtype == "q8_0" and array.ndim == 2 and "position_embd" not in name and array.shape[1] % 32 == 0:
        kind = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quants.quantize(array.astype(np.float32), kind), raw_dtype=kind)
    else:
        writer.add_tensor(name, array.astype(np.float16))


def write_mmproj(model: Any, processor: Any, out: Path, outtype: str = "f16") -> Path:
    import gguf

    config = model.config
    check_vision(config)
    vision = config.vision_config
    image_processor = processor.image_processor
    size = image_processor.size
    image_size = size.get("height") or size.get("shortest_edge")
    if image_size != vision.image_size:
        raise ExportError(
            f"the processor resizes to {image_size} but the tower was built for {vision.image_size}"
        )
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ])
    writer.add_name(Path(out).stem)
    file_types = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}
    writer.add_file_type(getattr(gguf.LlamaFileType, file_types[outtype]))
    writer.add_bool(gguf.Keys.Clip.HAS_VISION_ENCODER, True)
    writer.add_bool(gguf.Keys.Clip.HAS_LLAVA_PROJECTOR, True)
    writer.add_string(gguf.Keys.Clip.PROJECTOR_TYPE, "mlp")
    writer.add_uint32(gguf.Keys.ClipVision.IMAGE_SIZE, vision.image_size)
    writer.add_uint32(gguf.Keys.ClipVision.PATCH_SIZE, vision.patch_size)
    writer.add_uint32(gguf.Keys.ClipVision.EMBEDDING_LENGTH, vision.hidden_size)
    writer.add_uint32(gguf.Keys.ClipVision.FEED_FORWARD_LENGTH, vision.intermediate_size)
    writer.add_uint32(gguf.Keys.ClipVision.PROJECTION_DIM, config.get_text_config().hidden_size)
    writer.add_uint32(gguf.Keys.ClipVision.BLOCK_COUNT, vision.num_hidden_layers)
    writer.add_uint32("clip.vision.attention.head_count", vision.num_attention_heads)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", float(vision.layer_norm_eps))
    writer.add_array("clip.vision.feature_layer", [feature_layer(config)])
    writer.add_array(gguf.Keys.ClipVision.IMAGE_MEAN, [float(v) for v in image_processor.image_mean])
    writer.add_array(gguf.Keys.ClipVision.IMAGE_STD, [float(v) for v in image_processor.image_std])
    writer.add_bool(gguf.Keys.ClipVision.USE_GELU, TOWER_ACTIVATIONS[vision.hidden_act])
    for name, array in vision_state(model).items():
        add_stored(writer, name, array, outtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
