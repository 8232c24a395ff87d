"""`DistillTrainer`: a transformers.Trainer whose loss is the weighted sum of the terms of
distill/objective.py (SFT, KD, Align-TI's IVA and TPA, LLaVADI's hidden-state MSE, EM-KD's VSD and
VLAD), each logged as loss_<term>; with `loss.on_policy_ratio` (GKD) some batches are first
answered by the student (distill/on_policy.py).

The frozen teacher runs under no_grad; under DeepSpeed it is wrapped the way TRL wraps reference
models (sharded with ZeRO-3, replicated otherwise). LLaVADI's learned projection lives on the
student (so DDP and DeepSpeed train it), is left out of the saved model, and is checkpointed beside it.

Checkpoints are written to a hidden staging folder and renamed to `checkpoint-N` when complete,
so a run killed while saving keeps its previous checkpoint, and `--resume` never picks a partial
one. Each checkpoint holds the weights, the processor, the resolved run config and the optimizer,
scheduler, RNG and trainer state.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import shutil
from collections import defaultdict
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer
from transformers.trainer_utils import rotate_checkpoints

from distill.attention_capture import install_capture
from distill.batching import LengthGroupedSampler
from distill.configuration import ConfigError, save_config
from distill.hidden_alignment import PROJECTION_ATTRIBUTE, attach_projection
from distill.objective import ObjectiveMixin
from distill.on_policy import gathered_for_generation, on_policy_batch
from distill.optim import MuonWithAdamW
from distill.run_config import LossConfig

STAGING_DIR = ".partial"


RUN_CONFIG_NAME = "run_config.yaml"
PROJECTION_FILE = "hidden_projection.safetensors"


def prepare_deepspeed_teacher(teacher: torch.nn.Module, accelerator: Any) -> Any:
    """Wrap a frozen model for DeepSpeed inference: ZeRO-3 shards it like the student; any other
    stage keeps a full copy per device (stage 0). Follows TRL's `prepare_deepspeed`."""
    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    stage = config["zero_optimization"]["stage"]
    hidden = getattr(teacher.config.get_text_config(), "hidden_size", None)
    if stage == 3 and hidden is not None:
        config["zero_optimization"].update(
            {
                "reduce_bucket_size": hidden * hidden,
                "stage3_param_persistence_threshold": 10 * hidden,
                "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
            }
        )
    if stage != 3:
        config["zero_optimization"]["stage"] = 0
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    return engine


class DistillTrainer(ObjectiveMixin, Trainer):
    """Trainer for SFT and distillation of LLaVA-style models."""

    loss_is_scaled_for_ga = True  # compute_loss normalises by the tokens of the whole accumulated batch

    def __init__(
        self,
        *args: Any,
        loss_config: LossConfig,
        vocab_size: int,
        teacher: torch.nn.Module | None = None,
        run_config: Any = None,
        **kwargs: Any,
    ) -> None:
        if teacher is not None and loss_config.w_hidden > 0:
            attach_projection(
                kwargs["model"], teacher, loss_config.hidden_layers
            )  # before the move to device
        super().__init__(*args, **kwargs)
        self.loss_config = loss_config
        self.vocab_size = vocab_size
        self.run_config = run_config
        self._term_sums: dict[str, Any] = defaultdict(float)
        self._term_steps = 0
        self.tpa_candidate_counts = {"continued": 0, "all": 0}
        self.teacher = None
        if teacher is not None and loss_config.needs_teacher:
            teacher.eval().requires_grad_(False)
            if loss_config.w_iva > 0 and loss_config.iva_weights == "teacher":
                install_capture(teacher)  # plain SDPA except while a capture is active
            if self.is_deepspeed_enabled:
                self.teacher = prepare_deepspeed_teacher(teacher, self.accelerator)
            else:
                self.teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """train.group_by_length: batches of similar length (distill/batching.py), from the lengths of
        the tokenized records; transformers' own sampler would load every item, images included."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length":
            return LengthGroupedSampler(
                dataset.lengths, self.args.per_device_train_batch_size, self.args.seed
            )
        return super()._get_train_sampler(train_dataset)

    # -- optimizer -------------------------------------------------------------------------------
    def module_learning_rates(self) -> dict[str, float]:
        """Parameter-name prefix -> peak learning rate, for the modules given their own rate."""
        t = self.run_config.train if self.run_config is not None else None
        rates = {}
        if t is not None and t.vision_tower_lr is not None:
            rates["model.vision_tower."] = t.vision_tower_lr
        if t is not None and t.projector_lr is not None:
            rates["model.multi_modal_projector."] = t.projector_lr
        return rates

    def create_optimizer(self, model: Any = None) -> Any:
        """Muon + AdamW when configured; else AdamW with one group per (learning rate, weight decay)."""
        t = self.run_config.train if self.run_config is not None else None
        if self.optimizer is None and t is not None and t.optimizer == "muon":
            if self.is_deepspeed_enabled:
                raise ConfigError("train.optimizer=muon cannot run under DeepSpeed ZeRO; use adamw")
            self.optimizer = MuonWithAdamW.for_model(
                self.model if model is None else model,
                self.args.learning_rate,
                t.muon_lr,
                self.args.weight_decay,
                (self.args.adam_beta1, self.args.adam_beta2),
                self.args.adam_epsilon,
            )
            return self.optimizer
        rates = self.module_learning_rates()
        if self.optimizer is not None or not rates:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = defaultdict(list)
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                lr = next(
                    (rate for prefix, rate in rates.items() if name.startswith(prefix)),
                    self.args.learning_rate,
                )
                groups[(lr, name in decay)].append(param)
        optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        kwargs.pop("lr", None)
        param_groups = [
            {"params": params, "lr": lr, "weight_decay": self.args.weight_decay if decays else 0.0}
            for (lr, decays), params in groups.items()
        ]
        self.optimizer = optimizer_cls(param_groups, lr=self.args.learning_rate, **kwargs)
        return self.optimizer

    # -- loss ------------------------------------------------------------------------------------
    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        cfg = self.loss_config
        on_policy = model.training and cfg.on_policy_ratio > 0 and random.random() < cfg.on_policy_ratio
        if on_policy:
            inputs = self._on_policy_inputs(model, inputs)
            # the sampled responses have their own lengths: normalise by this micro-batch's tokens
            num_items_in_batch = (
                inputs["labels"][:, 1:] != -100
            ).sum() * self.args.gradient_accumulation_steps
        terms = self.loss_terms(model, inputs, num_items_in_batch)
        loss = sum(getattr(cfg, f"w_{name}") * value for name, value in terms.items())
        # Terms are normalised by the token count of the whole (all-process) batch; DDP averages
        # gradients over processes, so scale back up (as Trainer.compute_loss does).
        scale = (
            self.accelerator.num_processes
            if self.args.average_tokens_across_devices and num_items_in_batch is not None and not on_policy
            else 1
        )
        loss = loss * scale
        if model.training:
            for name, value in terms.items():
                self._term_sums[name] = self._term_sums[name] + value.detach() * scale
            if cfg.on_policy_ratio > 0:
                self._term_sums["on_policy"] += float(on_policy) / self.args.gradient_accumulation_steps
            self._term_steps += 1 / self.args.gradient_accumulation_steps
        return (loss, None) if return_outputs else loss

    def _on_policy_inputs(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """GKD: the batch with its last responses sampled from the student."""
        student = self.accelerator.unwrap_model(model)
        eos = student.generation_config.eos_token_id
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        with gathered_for_generation(model):
            return on_policy_batch(
                student,
                inputs,
                tokenizer.pad_token_id,
                eos if isinstance(eos, list) else [eos],
                self.loss_config.on_policy_temperature,
                self.loss_config.on_policy_max_new_tokens,
            )

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._term_steps and "loss" in logs:
            for name, total in self._term_sums.items():
                key = "on_policy_share" if name == "on_policy" else f"loss_{name}"
                logs[key] = round(float(total) / self._term_steps, 6)
            self._term_sums.clear()
            self._term_steps = 0
        super().log(logs, *args, **kwargs)

    # -- checkpoints -------------------------------------------------------------------------------
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """Restore the weights through from_pretrained, which maps the checkpoint's saved key layout
        (transformers 5 writes LLaVA's legacy names) back onto the model. Trainer's own loader
        compares raw keys, finds none, and only warns. DeepSpeed restores from its own files."""
        if self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        saved = type(target).from_pretrained(
            resume_from_checkpoint, dtype=target.dtype, local_files_only=True
        )
        state = saved.state_dict()
        if hasattr(target, PROJECTION_ATTRIBUTE):  # LLaVADI's projection is stored beside the model
            projection = load_file(os.path.join(resume_from_checkpoint, PROJECTION_FILE))
            state.update({f"{PROJECTION_ATTRIBUTE}.{k}": v for k, v in projection.items()})
        target.load_state_dict(state, strict=True)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """Write checkpoint-N under a staging folder, then rename it into place."""
        run_dir = self.args.output_dir
        staging_root = os.path.join(run_dir, STAGING_DIR)
        name = f"checkpoint-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(os.path.join(staging_root, name), ignore_errors=True)
        self.args.output_dir = staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = run_dir
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            staged = os.path.join(staging_root, name)
            projection = getattr(self.accelerator.unwrap_model(model), PROJECTION_ATTRIBUTE, None)
            if projection is not None:
                state = {k: v.detach().cpu().contiguous() for k, v in projection.state_dict().items()}
                save_file(state, os.path.join(staged, PROJECTION_FILE))
            if self.run_config is not None:
                save_config(self.run_config, os.path.join(staged, RUN_CONFIG_NAME))
            target = os.path.join(run_dir, name)
            if os.path.exists(target):
                shutil.rmtree(target)
            os.replace(staged, target)
            with contextlib.suppress(OSError):  # the staging folder goes once it is empty
                os.rmdir(staging_root)
            rotate_checkpoints(
                run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=False
            )
        self.accelerator.wait_for_everyone()
