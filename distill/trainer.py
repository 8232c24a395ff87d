"""`DistillTrainer`: a transformers.Trainer whose loss is w_sft L_sft + w_kd L_kd + w_iva L_iva + w_tpa L_tpa.

L_iva (Align-TI's IVA) is the KL at the visual positions, weighted per sample by the teacher's
(or the student's) instruction-to-vision attention at one layer, captured during the same forward
(distill/attention_capture.py), and averaged over the samples that have an image. L_tpa (TPA) is
the KL after d candidates the student proposes at each response position (distill/tpa.py), by
kv-continuation or by one ribbon pass per model.

The student runs its normal forward (so DDP/DeepSpeed see it) with `logits_to_keep=1`; the loss
terms are computed from its final hidden states at the supervised positions by the chunked
functions of `distill.losses`. The frozen teacher runs under no_grad; under DeepSpeed it is
wrapped the way TRL wraps reference models (sharded with ZeRO-3, replicated otherwise).

Checkpoints are written to a hidden staging folder and renamed to `checkpoint-N` when complete,
so a run killed while saving keeps its previous checkpoint, and `--resume` never picks a partial
one. Each checkpoint holds the weights, the processor, the resolved run config and the optimizer,
scheduler, RNG and trainer state.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
from collections import defaultdict
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_utils import rotate_checkpoints

from distill.attention_capture import capture_instruction_attention, install_capture
from distill.configuration import ConfigError, save_config
from distill.losses import attention_weights, chunked_cross_entropy, chunked_divergence, normalized_sum
from distill.optim import MuonWithAdamW
from distill.run_config import LossConfig
from distill.tpa import (
    candidate_states,
    continuation_mask,
    continue_from_cache,
    draw_candidates,
    response_layout,
    ribbon_inputs,
    slot_candidates,
)

STAGING_DIR = ".partial"


RUN_CONFIG_NAME = "run_config.yaml"


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


class DistillTrainer(Trainer):
    """Trainer for SFT and logit distillation of LLaVA-style models."""

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
        super().__init__(*args, **kwargs)
        self.loss_config = loss_config
        self.vocab_size = vocab_size
        self.run_config = run_config
        self._term_sums: dict[str, Any] = defaultdict(float)
        self._term_steps = 0
        self.teacher = None
        if teacher is not None and max(loss_config.w_kd, loss_config.w_iva, loss_config.w_tpa) > 0:
            teacher.eval().requires_grad_(False)
            if loss_config.w_iva > 0 and loss_config.iva_weights == "teacher":
                install_capture(teacher)  # plain SDPA except while a capture is active
            if self.is_deepspeed_enabled:
                self.teacher = prepare_deepspeed_teacher(teacher, self.accelerator)
            else:
                self.teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)

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
    def _teacher_forward(
        self,
        inputs: dict[str, torch.Tensor],
        capture_layer: int | None = None,
        use_cache: bool = False,
        ribbon_candidates: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, Any]:
        """Teacher's final hidden states [B, T', H_t] over (x, y), labels [B, T'] (its own view of
        the images), its instruction-to-vision attention at `capture_layer` [B, V] (when given), and
        for TPA either its KV cache (`use_cache`) or, with `ribbon_candidates` [N, d], the hidden
        states of those candidates [N * d, H_t] from the same single ribbon pass."""
        prefix = "teacher_" if "teacher_input_ids" in inputs else ""
        teacher = self.accelerator.unwrap_model(self.teacher)
        ids, attention = inputs[f"{prefix}input_ids"], inputs[f"{prefix}attention_mask"]
        instruction, position_ids, length = inputs[f"{prefix}instruction_mask"], None, ids.shape[1]
        if ribbon_candidates is not None:
            layout = response_layout(inputs[f"{prefix}labels"])
            ids, position_ids, attention = ribbon_inputs(
                ids, attention, slot_candidates(ribbon_candidates, layout), layout
            )
            instruction = torch.cat(
                [instruction, instruction.new_zeros(ids.shape[0], ids.shape[1] - length)], 1
            )
        capture = (
            capture_instruction_attention(
                teacher, [capture_layer], instruction, ids == teacher.config.image_token_id
            )
            if capture_layer is not None
            else contextlib.nullcontext({})
        )
        with torch.no_grad(), capture as alphas:
            outputs = teacher.model(
                input_ids=ids,
                attention_mask=attention,
                position_ids=position_ids,
                pixel_values=inputs.get(f"{prefix}pixel_values"),
                use_cache=use_cache,
            )
        hidden = outputs.last_hidden_state
        extra = outputs.past_key_values if use_cache else None
        if ribbon_candidates is not None:
            d = ribbon_candidates.shape[1]
            extra = candidate_states(hidden[:, length:], layout, d)
        return hidden[:, :length], inputs[f"{prefix}labels"], alphas.get(capture_layer), extra

    def _student_forward(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[Any, Any]:
        """The student's forward (with its own attention captured for student-side IVA weights)."""
        cfg = self.loss_config
        student_side = cfg.w_iva > 0 and cfg.iva_weights == "student"
        capture = (
            capture_instruction_attention(
                self.accelerator.unwrap_model(model),
                [cfg.iva_student_layer],
                inputs["instruction_mask"],
                inputs["input_ids"] == self.accelerator.unwrap_model(model).config.image_token_id,
            )
            if student_side
            else contextlib.nullcontext({})
        )
        with capture as alphas:
            outputs = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                pixel_values=inputs.get("pixel_values"),
                output_hidden_states=True,
                logits_to_keep=1,
                use_cache=cfg.w_tpa > 0 and cfg.tpa_impl == "kv",  # TPA continues this pass's KV cache
            )
        return outputs, alphas.get(cfg.iva_student_layer) if student_side else None

    def _iva_term(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        student_states: torch.Tensor,
        teacher_states: torch.Tensor,
        alpha: torch.Tensor | None,
    ) -> torch.Tensor:
        """sum_k w_k KL(P_T || P_S) at the visual positions, averaged over the samples with an image."""
        prefix = "teacher_" if "teacher_input_ids" in inputs else ""
        image_id = self.accelerator.unwrap_model(model).config.image_token_id
        student_visual = inputs["input_ids"] == image_id
        teacher_visual = inputs[f"{prefix}input_ids"] == image_id
        has_image = student_visual.any(1)
        n_images = int(has_image.sum())
        if n_images == 0:
            return student_states.sum() * 0.0  # keeps the graph whole when a batch holds no image
        per_position = chunked_divergence(
            student_states[student_visual],
            teacher_states[teacher_visual],
            self.accelerator.unwrap_model(model).lm_head,
            self.accelerator.unwrap_model(self.teacher).lm_head,
            "forward_kl",
            self.loss_config.kl_chunk_size,
            self.vocab_size,
            self.loss_config.temperature,
        ).view(n_images, -1)  # [images, V]
        if alpha is None:  # uniform weights
            weights = torch.full_like(per_position, 1.0 / per_position.shape[1])
        else:
            weights = attention_weights(alpha[has_image].float())
        total = (per_position * weights).sum()
        return total / (n_images * self.args.gradient_accumulation_steps)

    def loss_terms(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], num_items_in_batch: Any = None
    ) -> dict[str, torch.Tensor]:
        """Each weighted term of the objective: SFT, KD and TPA (also divided by d) normalised by the
        supervised-token count, IVA by the number of images."""
        cfg = self.loss_config
        labels = inputs["labels"]
        outputs, student_alpha = self._student_forward(model, inputs)
        mask = labels[:, 1:] != -100  # position t predicts token t+1
        final_states = outputs.hidden_states[-1]
        student_hidden = final_states[:, :-1][mask]  # [N, H]
        n_items = num_items_in_batch if num_items_in_batch is not None else mask.sum()
        head = self.accelerator.unwrap_model(model).lm_head
        terms: dict[str, torch.Tensor] = {}
        if cfg.w_sft > 0:
            nll = chunked_cross_entropy(
                student_hidden, head, labels[:, 1:][mask], cfg.kl_chunk_size, self.vocab_size
            )
            terms["sft"] = normalized_sum(nll, n_items)
        candidates = self._draw_candidates(model, student_hidden) if cfg.w_tpa > 0 else None
        ribbon = cfg.w_tpa > 0 and cfg.tpa_impl == "ribbon"
        if cfg.w_kd > 0 or cfg.w_iva > 0 or cfg.w_tpa > 0:
            teacher_side = cfg.w_iva > 0 and cfg.iva_weights == "teacher"
            teacher_states, teacher_labels, teacher_alpha, teacher_tpa = self._teacher_forward(
                inputs,
                cfg.iva_layer if teacher_side else None,
                use_cache=cfg.w_tpa > 0 and not ribbon,
                ribbon_candidates=candidates if ribbon else None,
            )
        if cfg.w_kd > 0:
            teacher_hidden = teacher_states[:, :-1][teacher_labels[:, 1:] != -100]  # [N, H_t]
            per_position = chunked_divergence(
                student_hidden,
                teacher_hidden,
                head,
                self.accelerator.unwrap_model(self.teacher).lm_head,
                cfg.divergence,
                cfg.kl_chunk_size,
                self.vocab_size,
                cfg.temperature,
                cfg.jsd_beta,
                cfg.skew_alpha,
            )
            terms["kd"] = normalized_sum(per_position, n_items)
        if cfg.w_iva > 0:
            alpha = teacher_alpha if cfg.iva_weights == "teacher" else student_alpha
            terms["iva"] = self._iva_term(model, inputs, final_states, teacher_states, alpha)
        if cfg.w_tpa > 0:
            per_candidate = self._tpa_divergences(
                model, inputs, candidates, outputs.past_key_values, teacher_tpa
            )
            terms["tpa"] = normalized_sum(per_candidate, n_items) / cfg.tpa_candidates
        return terms

    def _draw_candidates(self, model: torch.nn.Module, student_hidden: torch.Tensor) -> torch.Tensor:
        """d distinct candidates [N, d] per response position from the student's own next-token
        distribution there (no gradient; the image token is never proposed)."""
        cfg = self.loss_config
        student = self.accelerator.unwrap_model(model)
        image_id = student.config.image_token_id
        parts = []
        with torch.no_grad():
            for part in student_hidden.detach().split(max(cfg.kl_chunk_size, 1)):
                logits = student.lm_head(part)[..., : self.vocab_size].float()
                if image_id < logits.shape[-1]:
                    logits[..., image_id] = float("-inf")
                parts.append(
                    draw_candidates(
                        logits, cfg.tpa_candidates, cfg.tpa_sampling, cfg.tpa_top_p, cfg.tpa_temperature
                    )
                )
        return (
            torch.cat(parts) if parts else student_hidden.new_zeros(0, cfg.tpa_candidates, dtype=torch.long)
        )

    def _tpa_divergences(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        candidates: torch.Tensor,
        student_cache: Any,
        teacher_tpa: Any,
    ) -> torch.Tensor:
        """KL(P_T || P_S) after each candidate [N * d]: by kv-continuation of both models' first-pass
        caches, or (tpa_impl=ribbon) from one ribbon pass of each model (distill/tpa.py)."""
        cfg = self.loss_config
        student = self.accelerator.unwrap_model(model)
        teacher = self.accelerator.unwrap_model(self.teacher)
        d = cfg.tpa_candidates
        layout = response_layout(inputs["labels"])
        slots = slot_candidates(candidates, layout)
        if cfg.tpa_impl == "ribbon":
            ids, positions, mask = ribbon_inputs(inputs["input_ids"], inputs["attention_mask"], slots, layout)
            states = student.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                pixel_values=inputs.get("pixel_values"),
            ).last_hidden_state[:, inputs["input_ids"].shape[1] :]
            teacher_hidden = teacher_tpa
        else:
            mask = continuation_mask(layout, inputs["attention_mask"], d)
            embed = student.get_input_embeddings()
            states = continue_from_cache(
                student.model.language_model, embed, student_cache, slots, layout, mask
            )
            prefix = "teacher_" if "teacher_input_ids" in inputs else ""
            t_layout = response_layout(inputs[f"{prefix}labels"])
            t_mask = continuation_mask(t_layout, inputs[f"{prefix}attention_mask"], d)
            with torch.no_grad():
                t_states = continue_from_cache(
                    teacher.model.language_model,
                    teacher.get_input_embeddings(),
                    teacher_tpa,
                    slot_candidates(candidates, t_layout),
                    t_layout,
                    t_mask,
                )
            teacher_hidden = candidate_states(t_states, t_layout, d)
        student_hidden = candidate_states(states, layout, d)
        return chunked_divergence(
            student_hidden,
            teacher_hidden,
            student.lm_head,
            teacher.lm_head,
            "forward_kl",
            cfg.kl_chunk_size,
            self.vocab_size,
            cfg.temperature,
        )

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        cfg = self.loss_config
        terms = self.loss_terms(model, inputs, num_items_in_batch)
        weights = {"sft": cfg.w_sft, "kd": cfg.w_kd, "iva": cfg.w_iva, "tpa": cfg.w_tpa}
        loss = sum(weights[name] * value for name, value in terms.items())
        # Terms are normalised by the token count of the whole (all-process) batch; DDP averages
        # gradients over processes, so scale back up (as Trainer.compute_loss does).
        scale = (
            self.accelerator.num_processes
            if self.args.average_tokens_across_devices and num_items_in_batch is not None
            else 1
        )
        loss = loss * scale
        if model.training:
            for name, value in terms.items():
                self._term_sums[name] = self._term_sums[name] + value.detach() * scale
            self._term_steps += 1 / self.args.gradient_accumulation_steps
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._term_steps and "loss" in logs:
            for name, total in self._term_sums.items():
                logs[f"loss_{name}"] = round(float(total) / self._term_steps, 6)
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
        target.load_state_dict(saved.state_dict(), strict=True)

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
            if self.run_config is not None:
                save_config(self.run_config, os.path.join(staged, RUN_CONFIG_NAME))
            target = os.path.join(run_dir, name)
            if os.path.exists(target):
                shutil.rmtree(target)
            os.replace(staged, target)
            rotate_checkpoints(
                run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=False
            )
        self.accelerator.wait_for_everyone()
