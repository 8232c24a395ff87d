"""`python -m distill build-student`: assemble a LLaVA student from a vision encoder and an LLM.

    python -m distill build-student --vision /models/siglip-base-patch16-384 \\
        --llm /models/Qwen2-0.5B-Instruct --out runs/qwen2-0.5b/student-init

    python -m distill build-student --vision /models/siglip-so400m-patch14-384 \\
        --llm /models/Qwen2-0.5B-Instruct --tokenizer-from /models/llava-interleave-qwen-7b-hf \\
        --out runs/qwen2-0.5b/student-init       # the teacher's tokenizer, chat template and <image>

The vision encoder (SigLIP or CLIP: a vision-only or full dual-encoder checkpoint, with its image
processor) and the LLM (Qwen2, Qwen3 or Llama, with its tokenizer and chat template) keep their
weights; a fresh 2-layer GELU MLP projector joins them (LLaVA's recipe: train it on captions in
stage 1, then fine-tune with distillation in stage 2). The `<image>` token is added to the
tokenizer if missing. With `--tokenizer-from TEACHER` the student takes the teacher's tokenizer,
chat template and image token instead (a llava-hf folder as downloaded included), so that the pair
passes `distill check`; every token the LLM's own tokenizer has must keep its id there, since the
LLM's embedding rows are read by id (an LLM of the teacher's family: Qwen2-0.5B for a Qwen2-7B
teacher). The result is one checkpoint in the kit's format, written atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from transformers import (
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from distill.modeling import (
    DTYPES,
    ModelFormatError,
    generation_config_for,
    load_processor,
    save_llava,
    skip_pooling_head,
)
from distill.tokenizer import CHATML_TEMPLATE, IMAGE_TOKEN
from distill.vision_encoders import load_vision_tower, vision_config_of

TEXT_TYPES = ("qwen2", "qwen3", "llama")


def check_same_numbering(
    llm_tokenizer: Any, teacher_tokenizer: Any, llm_path: Any, teacher_path: Any
) -> None:
    """Refuse a teacher tokenizer that gives any of the LLM's tokens another id (it may add tokens)."""
    theirs = teacher_tokenizer.get_vocab()
    moved = [(token, id_) for token, id_ in llm_tokenizer.get_vocab().items() if theirs.get(token) != id_]
    if moved:
        token, id_ = min(moved, key=lambda pair: pair[1])
        raise ModelFormatError(
            f"{teacher_path}'s tokenizer numbers {len(moved):,} of the {len(llm_tokenizer):,} tokens of "
            f"{llm_path} otherwise (first: {token!r} is {id_} in the LLM, {theirs.get(token)} in the "
            "teacher): the LLM's embeddings would be read for the wrong tokens; pick an LLM of the "
            "teacher's family"
        )


def prepare_tokenizer(path: str | Path, tokenizer_from: str | Path | None = None) -> tuple[Any, str]:
    """The student's tokenizer (chat template on it) and image token: the LLM's own, or the teacher's."""
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    image_token = IMAGE_TOKEN
    if tokenizer_from is not None:
        teacher = load_processor(tokenizer_from)  # the processor's template too (llava-hf's layout)
        check_same_numbering(tokenizer, teacher.tokenizer, path, tokenizer_from)
        tokenizer, image_token = teacher.tokenizer, teacher.image_token
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([image_token], special_tokens=True)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, image_token


def assemble(
    vision_path: str | Path,
    llm_path: str | Path,
    strategy: str = "full",
    feature_layer: int = -1,
    dtype: str = "float32",
    tokenizer_from: str | Path | None = None,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    torch_dtype = DTYPES[dtype]
    vision_config = vision_config_of(vision_path)
    tokenizer, image_token = prepare_tokenizer(llm_path, tokenizer_from)  # refused before any weights load
    llm = AutoModelForCausalLM.from_pretrained(llm_path, dtype=torch_dtype, local_files_only=True)
    if llm.config.model_type not in TEXT_TYPES:
        raise ModelFormatError(
            f"{llm_path}: LLM '{llm.config.model_type}' is not one of {', '.join(TEXT_TYPES)}"
        )
    if len(tokenizer) > llm.config.vocab_size:
        llm.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    text_config = llm.config
    text_config.architectures = [type(llm).__name__]
    image_size, patch_size = vision_config.image_size, vision_config.patch_size
    n_tokens = (image_size // patch_size) ** 2 + (1 if vision_config.model_type == "clip_vision_model" else 0)
    n_tokens -= 1 if strategy == "default" else 0
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(image_token),
        projector_hidden_act="gelu",
        vision_feature_select_strategy=strategy,
        vision_feature_layer=feature_layer,
        image_seq_length=n_tokens,
        tie_word_embeddings=text_config.tie_word_embeddings,
    )
    model = LlavaForConditionalGeneration(config).to(torch_dtype)
    skip_pooling_head(model.model.vision_tower)
    model.model.vision_tower.load_state_dict(load_vision_tower(vision_path, vision_config, torch_dtype))
    model.model.language_model.load_state_dict(llm.model.state_dict())
    model.lm_head.load_state_dict(llm.lm_head.state_dict())
    if text_config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = generation_config_for(tokenizer)
    processor = LlavaProcessor(
        image_processor=AutoImageProcessor.from_pretrained(vision_path, local_files_only=True),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=strategy,
        chat_template=tokenizer.chat_template,
        num_additional_image_tokens=1 if vision_config.model_type == "clip_vision_model" else 0,
        image_token=image_token,
    )
    return model, processor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vision", required=True, help="SigLIP or CLIP checkpoint directory (with its image processor)"
    )
    parser.add_argument(
        "--llm", required=True, help="Qwen2/Qwen3/Llama causal LM directory (with its tokenizer)"
    )
    parser.add_argument("--out", required=True, help="where to write the assembled student")
    parser.add_argument(
        "--strategy",
        choices=["full", "default"],
        default="full",
        help="visual tokens: 'full' keeps every patch (SigLIP); 'default' drops CLIP's CLS",
    )
    parser.add_argument(
        "--feature-layer", type=int, default=-1, help="vision layer feeding the projector (-2 for CLIP)"
    )
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="float32", help="weight dtype of the saved model"
    )
    parser.add_argument(
        "--tokenizer-from",
        metavar="TEACHER",
        help="a LLaVA checkpoint (the teacher) whose tokenizer, chat template and image token the student "
        "takes, so that the pair shares them; the LLM's own tokens must keep their ids in it",
    )


def run(args: argparse.Namespace) -> int:
    model, processor = assemble(
        args.vision, args.llm, args.strategy, args.feature_layer, args.dtype, args.tokenizer_from
    )
    out = save_llava(model, processor, args.out)
    total = sum(p.numel() for p in model.parameters())
    projector = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    print(
        f"assembled {out}: {total:,} parameters ({projector:,} in the fresh projector), "
        f"{model.config.image_seq_length} visual tokens per image"
    )
    return 0
