"""The three PyTorch modules a LLaVA checkpoint is exported as, with their ONNX input/output names.

    vision_encoder.onnx        pixel_values [batch, 3, H, W] -> image_features [batch, n_visual, hidden]
    embed_tokens.onnx          input_ids [batch, seq] -> inputs_embeds [batch, seq, hidden]
    decoder_model_merged.onnx  inputs_embeds, attention_mask [batch, past + seq], position_ids,
                               past_key_values.{i}.key/value [batch, kv_heads, past, head_dim]
                               -> logits [batch, seq, vocab], present.{i}.key/value

The layout is the one ONNX Runtime GenAI and transformers.js users know. The decoder is one graph
for the prompt and for every decoding step ("merged"): the first call passes an empty past.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache


class VisionEncoder(torch.nn.Module):
    """Vision tower, feature layer and selection strategy, projector: what LLaVA splices into the text."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.vision_tower = model.model.vision_tower
        self.projector = model.model.multi_modal_projector
        self.feature_layer = model.config.vision_feature_layer
        self.drop_cls = model.config.vision_feature_select_strategy == "default"
        if not isinstance(self.feature_layer, int):
            raise ValueError("export supports one vision feature layer (an int), as LLaVA-1.5 uses")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        states = self.vision_tower(pixel_values, output_hidden_states=True).hidden_states[self.feature_layer]
        if self.drop_cls:
            states = states[:, 1:]
        return self.projector(states)


class TokenEmbedding(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.embed = model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids)


class Decoder(torch.nn.Module):
    """The LLM and its head over flat past key/value tensors, returning the grown cache as flat tensors."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.text_config = model.config.get_text_config()
        self.language_model = model.model.language_model
        self.lm_head = model.lm_head
        self.layers = self.text_config.num_hidden_layers

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        cache = DynamicCache(config=self.text_config)
        for layer in range(self.layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        output = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,  # transformers 5 renamed past_key_values
            use_cache=True,
        )
        present = []
        for layer in range(self.layers):
            present += [cache.layers[layer].keys, cache.layers[layer].values]
        return (self.lm_head(output.last_hidden_state), *present)


def kv_shape(text_config: Any) -> tuple[int, int]:
    """(key/value heads, head dimension) of the LLM's cache."""
    head_dim = (
        getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    )
    return text_config.num_key_value_heads, head_dim


def decoder_input_names(layers: int) -> list[str]:
    past = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    return ["inputs_embeds", "attention_mask", "position_ids", *past]


def decoder_output_names(layers: int) -> list[str]:
    return ["logits", *[f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]]
