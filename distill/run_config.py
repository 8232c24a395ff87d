"""The fields of a training run, one dataclass per section of the YAML file.

A run is one stage: train a model (a fresh tiny build, a checkpoint, or an assembled student) on a
LLaVA-format dataset, optionally against a frozen teacher. See configs/*.yaml for examples and
`python -m distill train --help` for how to run one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from distill.configuration import ConfigError, check_range

Dtype = Literal["float32", "bfloat16", "float16"]
Divergence = Literal["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd"]
Module = Literal["vision_tower", "projector", "language_model"]


@dataclass
class ArchConfig:
    """Shape of a model built from scratch (the tiny default); real models load from `model.path`."""

    image_size: int = 64  # input resolution (square), pixels
    patch_size: int = 16  # vision patch size; image tokens = (image_size / patch_size)^2
    vision_hidden_size: int = 128  # width of the SigLIP-style vision tower
    vision_layers: int = 2  # transformer layers in the vision tower
    vision_heads: int = 4  # attention heads in the vision tower
    vision_intermediate_size: int = 256  # MLP width in the vision tower
    vision_model_type: Literal["siglip", "clip"] = (
        "siglip"  # clip: a class token, read at layer -2 (LLaVA-1.5)
    )
    text_model_type: Literal["qwen2", "qwen3", "llama"] = "qwen2"  # LLM family
    hidden_size: int = 128  # LLM width
    num_layers: int = 4  # LLM decoder layers
    num_heads: int = 4  # LLM attention heads
    num_kv_heads: int = 2  # LLM key/value heads (grouped-query attention)
    intermediate_size: int = 384  # LLM MLP width
    max_position_embeddings: int = 512  # longest sequence the LLM is built for
    rope_theta: float = 10000.0  # RoPE base
    tie_word_embeddings: bool = True  # share the input embedding with the LM head
    vocab_size: int = 0  # embedding / LM-head rows; 0: the tokenizer's size (Qwen2 pads to 151,936)

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"model.arch.image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ConfigError(
                "model.arch: hidden_size must divide by num_heads and num_heads by num_kv_heads "
                f"(got {self.hidden_size}, {self.num_heads}, {self.num_kv_heads})"
            )
        if self.vision_hidden_size % self.vision_heads:
            raise ConfigError("model.arch.vision_hidden_size must divide by vision_heads")


@dataclass
class ModelConfig:
    """The model being trained (the student, or the teacher in its own SFT run)."""

    path: str | None = None  # local LLaVA checkpoint directory (weights + processor) to start from
    arch: ArchConfig | None = None  # or: build a fresh model of this shape (needs `tokenizer`)
    tokenizer: str | None = None  # tokenizer directory for `arch` builds (the synthetic world writes one)
    vision_init: str | None = None  # LLaVA checkpoint whose vision tower initialises this model's
    dtype: Dtype = "float32"  # weight dtype when loading (training uses train.bf16 for autocast)
    attn_implementation: Literal["sdpa", "eager", "flex_attention"] = "sdpa"  # attention kernel

    def __post_init__(self) -> None:
        if (self.path is None) == (self.arch is None):
            raise ConfigError(
                "model: give exactly one of model.path (a checkpoint) or model.arch (a fresh build)"
            )
        if self.arch is not None and self.tokenizer is None:
            raise ConfigError("model.tokenizer is required when model.arch builds a fresh model")


@dataclass
class TeacherConfig:
    """The frozen teacher of a distillation run; leave `path` empty for SFT alone."""

    path: str | None = None  # local LLaVA checkpoint directory
    dtype: Dtype = "float32"  # the teacher runs in this dtype (bfloat16 halves its memory on GPU)


@dataclass
class DataConfig:
    """LLaVA-format training data."""

    train_json: str = "data/shapes/train.json"  # list of {id, image, conversations}
    image_folder: str | None = None  # images are relative to this; default: the JSON file's folder
    max_length: int = 512  # longest tokenized sequence; longer records lose response tokens at the end
    skip_bad_records: bool = (
        False  # skip malformed records and unreadable images (counted) instead of failing
    )
    max_records: int | None = None  # use only the first N records (quick experiments)
    # each question of a multi-turn record its own example, with the image (distill/data.py)
    split_turns: bool = False
    # several examples per row instead of one padded row each: the same loss, less padding to compute
    # (distill/packing.py); for SFT and KD
    pack: bool = False
    # processed images kept in memory between draws, in MiB per data-loading process (distill/pixel_cache.py)
    image_cache_mib: float = 0.0

    def __post_init__(self) -> None:
        check_range("data.max_length", self.max_length, 8)
        check_range("data.image_cache_mib", self.image_cache_mib, 0.0)
        if self.max_records is not None:
            check_range("data.max_records", self.max_records, 1)


@dataclass
class LossConfig:
    """Weights and form of the training objective: w_sft * L_sft + w_kd * L_kd."""

    w_sft: float = 1.0  # cross-entropy on the response tokens
    w_kd: float = 0.0  # divergence from the teacher at each response position (needs a teacher)
    divergence: Divergence = "forward_kl"  # KL(P_T||P_S) is vanilla KD; others for the paper's Table 3
    temperature: float = 1.0  # both distributions are softened by this temperature
    jsd_beta: float = 0.5  # mixture weight of generalized JSD (0.5 is symmetric JSD)
    skew_alpha: float = 0.1  # skew of skew KL: KL(P || a*P + (1-a)*Q)
    kl_chunk_size: int = 1024  # positions per chunk of the chunked divergence (0: naive, whole logits)
    # GPU: SFT, KD and TPA through liger-kernel's fused LM-head + loss kernels (distill/fused_losses.py)
    fused_kernel: bool = False
    # IVA (Align-TI): KL(P_T || P_S) at each visual position, weighted by instruction-to-vision attention
    w_iva: float = 0.0
    iva_weights: Literal["teacher", "student", "uniform"] = "teacher"  # uniform: LLaVA-KD's visual KD
    iva_layer: int | None = None  # teacher layer of the weights; default: l* from `distill irs` (irs.json)
    iva_student_layer: int | None = None  # with iva_weights=student; default: l*'s relative depth
    # TPA (Align-TI): KL(P_T || P_S) of the next token after each of d candidates the student proposes
    w_tpa: float = 0.0
    tpa_candidates: int = 4  # d, candidates per response position (the paper's plateau)
    tpa_sampling: Literal["nucleus", "greedy"] = "nucleus"  # greedy: the top-d tokens (paper Fig. 5)
    tpa_top_p: float = 0.9  # nucleus mass the candidates are drawn from (without replacement)
    tpa_temperature: float = 1.0  # applied to the student's distribution before drawing
    # kv: continue each model's KV cache over the candidates; ribbon: one pass over (x, y) + candidates
    tpa_impl: Literal["kv", "ribbon"] = "kv"
    # GKD (Agarwal et al.): with probability on_policy_ratio a batch's last responses are replaced by the
    # student's own samples before the losses (pair with divergence=jsd for GKD's generalized JSD)
    on_policy_ratio: float = 0.0  # GKD's lambda
    on_policy_temperature: float = 0.9  # sampling temperature of the student's responses (TRL's default)
    on_policy_max_new_tokens: int = 128  # longest sampled response
    # LLaVADI: MSE between the student's hidden states, through a learned linear map when the widths
    # differ, and the teacher's at the same relative depth
    w_hidden: float = 0.0
    hidden_layers: list[int] = field(default_factory=lambda: [-1])  # student layers (0: embeddings, -1: last)
    hidden_tokens: Literal["visual", "response", "both"] = "both"  # which positions are aligned
    # EM-KD, for students with fewer visual tokens: teacher and student visual tokens are matched
    # (Hungarian, L1 distance of their LM-head distributions), then
    w_vsd: float = 0.0  # VSD: reverse KL(P_S || P_T) between the matched visual tokens' distributions
    w_vlad: float = 0.0  # VLAD: smooth-L1 between text-to-vision affinity (cosine) matrices after matching

    @property
    def teacher_terms(self) -> dict[str, float]:
        """The weights of the terms that need a teacher."""
        names = ("w_kd", "w_iva", "w_tpa", "w_hidden", "w_vsd", "w_vlad")
        return {name: getattr(self, name) for name in names}

    @property
    def needs_teacher(self) -> bool:
        return max(self.teacher_terms.values()) > 0

    def __post_init__(self) -> None:
        check_range("loss.w_sft", self.w_sft, 0.0)
        check_range("loss.w_kd", self.w_kd, 0.0)
        check_range("loss.temperature", self.temperature, 1e-3)
        check_range("loss.jsd_beta", self.jsd_beta, 0.0, 1.0)
        check_range("loss.skew_alpha", self.skew_alpha, 0.0, 1.0, high_open=True)  # 1: log(0)
        check_range("loss.kl_chunk_size", self.kl_chunk_size, 0)
        check_range("loss.w_iva", self.w_iva, 0.0)
        check_range("loss.w_tpa", self.w_tpa, 0.0)
        check_range("loss.tpa_candidates", self.tpa_candidates, 1)
        check_range("loss.tpa_top_p", self.tpa_top_p, 1e-6, 1.0)
        check_range("loss.tpa_temperature", self.tpa_temperature, 1e-3)
        for name in ("w_hidden", "w_vsd", "w_vlad"):
            check_range(f"loss.{name}", getattr(self, name), 0.0)
        check_range("loss.on_policy_ratio", self.on_policy_ratio, 0.0, 1.0)
        check_range("loss.on_policy_temperature", self.on_policy_temperature, 1e-3)
        check_range("loss.on_policy_max_new_tokens", self.on_policy_max_new_tokens, 1)
        if self.w_sft == 0 and not self.needs_teacher:
            raise ConfigError(
                "loss: at least one of w_sft, " + ", ".join(self.teacher_terms) + " must be positive"
            )
        if self.fused_kernel and self.w_kd > 0 and self.divergence not in ("forward_kl", "reverse_kl", "jsd"):
            raise ConfigError(
                f"loss.fused_kernel covers the divergences forward_kl, reverse_kl and jsd, not {self.divergence}"
            )
        if self.on_policy_ratio > 0 and not self.needs_teacher:
            raise ConfigError(
                "loss.on_policy_ratio > 0 samples responses for the teacher to grade: set loss.w_kd"
            )


LrScheduler = Literal["cosine", "linear", "constant", "constant_with_warmup", "warmup_stable_decay"]


@dataclass
class TrainConfig:
    """Optimisation, checkpointing and logging (handed to transformers.TrainingArguments)."""

    output_dir: str = "runs/unnamed"  # checkpoints, logs and the final model go here
    train_modules: list[Module] = field(
        default_factory=lambda: ["vision_tower", "projector", "language_model"]
    )  # stage 1 (LLaVA pretraining): [projector]; stage 2: [projector, language_model]
    max_steps: int = -1  # optimizer steps; -1 runs `epochs` epochs
    epochs: float = 1.0  # passes over the data when max_steps is -1
    batch_size: int = 8  # per device
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    # peak learning rate (of AdamW; with optimizer muon, of the weights that are not hidden matrices)
    learning_rate: float = 2e-5
    # muon: Muon for the hidden matrices + AdamW for the rest (one process or DDP; not under DeepSpeed)
    optimizer: Literal["adamw", "muon"] = "adamw"
    muon_lr: float = 2e-3  # peak learning rate of the Muon-updated matrices (AdamW-matched RMS scale)
    vision_tower_lr: float | None = None  # peak learning rate of the vision tower (default: learning_rate)
    projector_lr: float | None = None  # peak learning rate of the projector (LLaVA's mm_projector_lr)
    weight_decay: float = 0.0  # AdamW weight decay
    adam_beta2: float = 0.999  # AdamW second-moment decay (0.95-0.98 steadies small models at high rates)
    warmup_ratio: float = 0.03  # share of steps with linear warm-up
    lr_scheduler: LrScheduler = "cosine"
    decay_ratio: float = 0.2  # warmup_stable_decay: share of steps of the final (cosine) decay
    max_grad_norm: float = 1.0  # gradient clipping
    # bf16 autocast (fp32 master weights); auto: on a GPU that supports it, fp32 elsewhere; native: also
    # on a CPU with bf16 instructions (AVX512-BF16 or AMX), whose matrix products then run faster, the
    # LLM's attention staying float32 (distill/float32_attention.py; docs/tiny-world.md, "bf16 on a CPU")
    bf16: bool | Literal["auto", "native"] = "auto"
    gradient_checkpointing: bool = False  # recompute activations in backward (less memory, ~30% slower)
    seed: int = 0  # seeds data order, dropout and initialisation
    logging_steps: int = 10  # log the loss terms every N steps
    save_steps: int = 200  # checkpoint every N steps
    save_total_limit: int = 2  # keep this many checkpoints
    deepspeed: str | None = (
        None  # DeepSpeed JSON (configs/deepspeed/zero2.json); used under accelerate launch
    )
    dataloader_num_workers: int = 0  # worker processes loading images
    # draw batches of similar length (distill/batching.py: each group of 50 batches sorted by length,
    # then all batches shuffled), so little of a step is spent on padding
    group_by_length: bool = False
    report_to: Literal["tensorboard", "none"] = "tensorboard"  # where metrics go (output_dir/logs)
    torch_threads: int = 0  # CPU threads for torch (0: torch's default)
    # Let SDPA pick its cuDNN kernel on GPU. Off by default: on an H100 (torch 2.11) it spent ~7 ms of
    # CPU per attention call on batches of varying padded length, leaving the GPU idle (docs/gpu.md).
    cudnn_attention: bool = False
    profile_steps: int = 0  # record N steps after the warm-up with torch.profiler (distill/profiling.py)

    def __post_init__(self) -> None:
        check_range("train.batch_size", self.batch_size, 1)
        check_range("train.gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        check_range("train.learning_rate", self.learning_rate, 0.0, 1.0)
        # below 1: transformers reads a warmup_steps of 1 or more as a count of steps
        check_range("train.warmup_ratio", self.warmup_ratio, 0.0, 1.0, high_open=True)
        check_range("train.decay_ratio", self.decay_ratio, 0.0, 1.0)
        if self.lr_scheduler == "warmup_stable_decay" and self.max_steps <= 0:
            raise ConfigError(
                "train.lr_scheduler=warmup_stable_decay needs train.max_steps (its decay is counted in steps)"
            )
        check_range("train.save_steps", self.save_steps, 1)
        check_range("train.logging_steps", self.logging_steps, 1)
        check_range("train.profile_steps", self.profile_steps, 0)
        if not self.train_modules:
            raise ConfigError("train.train_modules is empty: nothing would be trained")
        if self.optimizer == "muon" and self.deepspeed is not None:
            raise ConfigError(
                "train.optimizer=muon needs whole weight matrices per process; it cannot run under DeepSpeed ZeRO"
            )
        if self.optimizer == "muon" and (self.vision_tower_lr is not None or self.projector_lr is not None):
            raise ConfigError(
                "train.vision_tower_lr and train.projector_lr apply to AdamW only; unset them with optimizer=muon"
            )
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError("train.max_steps must be positive, or -1 to train for train.epochs")


@dataclass
class RunConfig:
    """One training stage."""

    model: ModelConfig
    name: str = "run"  # a label for logs and the model card
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for term, weight in self.loss.teacher_terms.items():
            if weight > 0 and self.teacher.path is None:
                raise ConfigError(f"loss.{term} > 0 needs a teacher: set teacher.path")
        layout_terms = ("w_iva", "w_tpa", "w_hidden", "w_vsd", "w_vlad", "on_policy_ratio")
        unpackable = [f"loss.{name}" for name in layout_terms if getattr(self.loss, name) > 0]
        if self.data.pack and unpackable:
            raise ConfigError(
                f"data.pack packs several examples into a row, which {', '.join(unpackable)} "
                "cannot read (they need each example's own row): set data.pack=false"
            )
        if self.loss.w_tpa > 0 and self.train.gradient_checkpointing:
            raise ConfigError(
                "loss.w_tpa > 0 continues the first pass's KV cache, which gradient checkpointing does not keep; "
                "set train.gradient_checkpointing=false"
            )
