"""The training objective, term by term: `ObjectiveMixin.loss_terms(model, inputs)` -> {name: tensor}.

    sft     cross-entropy on the response tokens
    kd      a divergence (forward KL by default) at each response position        (vanilla KD, GKD)
    iva     Align-TI's IVA: KL at the visual positions, weighted by the teacher's (or student's)
            instruction-to-vision attention at one layer (distill/attention_capture.py)
    tpa     Align-TI's TPA: KL after d candidates the student proposes at each response position,
            by kv-continuation (distill/continuation.py) or one ribbon pass per model (distill/tpa.py)
    hidden  LLaVADI's token alignment: MSE of hidden states through a learned map (distill/hidden_alignment.py)
    vsd     EM-KD: reverse KL between Hungarian-matched visual tokens (distill/emkd.py)
    vlad    EM-KD: smooth-L1 between text-to-vision affinity matrices after matching

The student runs its normal forward (so DDP/DeepSpeed see it) with `logits_to_keep=1`; the terms
are computed from its hidden states at the positions each term needs, by the chunked functions of
`distill.losses`, so no [positions x vocabulary] logits exist whole (with loss.fused_kernel, on a
GPU, sft, kd and tpa go through liger-kernel's fused kernels instead: distill/fused_losses.py). The
frozen teacher runs once per step under no_grad. sft, kd and tpa (also divided by d) are normalised by the supervised-token
count of the whole accumulated batch; iva, hidden, vsd and vlad are means over images or positions
of the micro-batch, divided by the accumulation steps. `DistillTrainer` (distill/trainer.py) mixes
this in and weights the terms.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from distill.attention_capture import capture_instruction_attention
from distill.continuation import states_after_candidates, to_continue
from distill.emkd import affinity_loss, match_visual_tokens
from distill.fused_losses import fused_cross_entropy_sum, fused_divergence_sum
from distill.hidden_alignment import PROJECTION_ATTRIBUTE, hidden_mse, layer_pairs
from distill.losses import attention_weights, chunked_cross_entropy, chunked_divergence, normalized_sum
from distill.tpa import (
    candidate_states,
    draw_candidates,
    mask_for_attention,
    response_layout,
    ribbon_inputs,
    slot_candidates,
)


@dataclass
class TeacherPass:
    """What one teacher forward gives the terms."""

    states: torch.Tensor  # final hidden states over (x, y) [B, T', H_t]
    labels: torch.Tensor  # its labels [B, T'] (its own view of the images)
    ids: torch.Tensor  # its input ids [B, T']
    attention: torch.Tensor  # its attention mask [B, T']
    alpha: torch.Tensor | None  # instruction-to-vision attention at IVA's layer [B, V]
    tpa: Any  # its KV cache (TPA kv), or the candidates' states [N * d, H_t] (TPA ribbon)
    all_states: tuple[torch.Tensor, ...] | None  # every layer's hidden states (LLaVADI)


class ObjectiveMixin:
    """Loss terms of `DistillTrainer`; needs `self.loss_config`, `self.vocab_size`, `self.teacher`,
    `self.accelerator` and `self.args` (transformers.Trainer provides the last two)."""

    loss_config: Any
    vocab_size: int
    teacher: Any
    # TPA kv: candidates continued / all (the rest read from the first pass)
    tpa_candidate_counts: dict[str, int]
    accelerator: Any
    args: Any

    def _unwrapped(self, model: torch.nn.Module) -> Any:
        return self.accelerator.unwrap_model(model)

    # -- forwards --------------------------------------------------------------------------------
    def _teacher_forward(
        self,
        inputs: dict[str, torch.Tensor],
        capture_layer: int | None = None,
        use_cache: bool = False,
        ribbon_candidates: torch.Tensor | None = None,
        all_states: bool = False,
    ) -> TeacherPass:
        """One teacher pass over (x, y); with `ribbon_candidates` [N, d] the TPA candidates ride
        along in the same pass (ribbon), with `use_cache` its KV cache is kept for kv-continuation."""
        prefix = "teacher_" if "teacher_input_ids" in inputs else ""
        teacher = self._unwrapped(self.teacher)
        ids, attention = inputs[f"{prefix}input_ids"], inputs[f"{prefix}attention_mask"]
        instruction, length = inputs[f"{prefix}instruction_mask"], ids.shape[1]
        position_ids = inputs.get(f"{prefix}position_ids")  # packed rows (distill/packing.py)
        run_ids, run_attention = ids, None if position_ids is not None else attention
        if ribbon_candidates is not None:
            layout = response_layout(inputs[f"{prefix}labels"])
            run_ids, position_ids, run_attention = ribbon_inputs(
                ids, attention, slot_candidates(ribbon_candidates, layout), layout
            )
            run_attention = mask_for_attention(teacher, run_attention)
            instruction = torch.cat(
                [instruction, instruction.new_zeros(ids.shape[0], run_ids.shape[1] - length)], 1
            )
        capture = (
            capture_instruction_attention(
                teacher, [capture_layer], instruction, run_ids == teacher.config.image_token_id
            )
            if capture_layer is not None
            else contextlib.nullcontext({})
        )
        with torch.no_grad(), capture as alphas:
            outputs = teacher.model(
                input_ids=run_ids,
                attention_mask=run_attention,
                position_ids=position_ids,
                pixel_values=inputs.get(f"{prefix}pixel_values"),
                use_cache=use_cache,
                output_hidden_states=all_states,
            )
        hidden = outputs.last_hidden_state
        tpa = outputs.cache if use_cache else None
        if ribbon_candidates is not None:
            tpa = candidate_states(hidden[:, length:], layout, ribbon_candidates.shape[1])
        return TeacherPass(
            hidden[:, :length],
            inputs[f"{prefix}labels"],
            ids,
            attention,
            alphas.get(capture_layer),
            tpa,
            outputs.hidden_states if all_states else None,
        )

    def _student_forward(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[Any, Any]:
        """The student's forward (with its own attention captured for student-side IVA weights)."""
        cfg = self.loss_config
        student_side = cfg.w_iva > 0 and cfg.iva_weights == "student"
        student = self._unwrapped(model)
        capture = (
            capture_instruction_attention(
                student,
                [cfg.iva_student_layer],
                inputs["instruction_mask"],
                inputs["input_ids"] == student.config.image_token_id,
            )
            if student_side
            else contextlib.nullcontext({})
        )
        with capture as alphas:
            packed = "position_ids" in inputs  # distill/packing.py: the restarts of the positions mask
            outputs = model(
                input_ids=inputs["input_ids"],
                attention_mask=None if packed else inputs["attention_mask"],
                position_ids=inputs.get("position_ids"),
                pixel_values=inputs.get("pixel_values"),
                output_hidden_states=True,
                logits_to_keep=1,
                use_cache=cfg.w_tpa > 0 and cfg.tpa_impl == "kv",  # TPA continues this pass's KV cache
            )
        return outputs, alphas.get(cfg.iva_student_layer) if student_side else None

    # -- the objective -----------------------------------------------------------------------------
    def loss_terms(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], num_items_in_batch: Any = None
    ) -> dict[str, torch.Tensor]:
        """Each (unweighted) term of the objective whose weight is positive."""
        cfg = self.loss_config
        labels = inputs["labels"]
        outputs, student_alpha = self._student_forward(model, inputs)
        mask = labels[:, 1:] != -100  # position t predicts token t+1
        final_states = outputs.hidden_states[-1]
        student_hidden = final_states[:, :-1][mask]  # [N, H]
        n_items = num_items_in_batch if num_items_in_batch is not None else mask.sum()
        head = self._unwrapped(model).lm_head
        terms: dict[str, torch.Tensor] = {}
        if cfg.w_sft > 0:
            nll = self._cross_entropy_sum(student_hidden, head, labels[:, 1:][mask])
            terms["sft"] = normalized_sum(nll.reshape(1), n_items)
        if not cfg.needs_teacher:
            return terms
        candidates = self._draw_candidates(model, student_hidden) if cfg.w_tpa > 0 else None
        ribbon = cfg.w_tpa > 0 and cfg.tpa_impl == "ribbon"
        teacher_side = cfg.w_iva > 0 and cfg.iva_weights == "teacher"
        teacher = self._teacher_forward(
            inputs,
            cfg.iva_layer if teacher_side else None,
            use_cache=cfg.w_tpa > 0 and not ribbon,
            ribbon_candidates=candidates if ribbon else None,
            all_states=cfg.w_hidden > 0,
        )
        teacher_mask = teacher.labels[:, 1:] != -100
        if cfg.w_kd > 0:
            total = self._divergence_sum(
                student_hidden,
                teacher.states[:, :-1][teacher_mask],
                head,
                self._unwrapped(self.teacher).lm_head,
                cfg.divergence,
            )
            terms["kd"] = normalized_sum(total.reshape(1), n_items)
        if cfg.w_iva > 0:
            alpha = teacher.alpha if cfg.iva_weights == "teacher" else student_alpha
            terms["iva"] = self._iva_term(model, inputs, final_states, teacher, alpha)
        if cfg.w_tpa > 0:
            total = self._tpa_divergence_sum(model, inputs, candidates, outputs.cache, final_states, teacher)
            terms["tpa"] = normalized_sum(total.reshape(1), n_items) / cfg.tpa_candidates
        if cfg.w_hidden > 0:
            terms["hidden"] = self._hidden_term(model, inputs, outputs.hidden_states, teacher)
        if cfg.w_vsd > 0 or cfg.w_vlad > 0:
            terms.update(self._emkd_terms(model, inputs, final_states, teacher))
        return terms

    # -- Align-TI ----------------------------------------------------------------------------------
    def _iva_term(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        student_states: torch.Tensor,
        teacher: TeacherPass,
        alpha: torch.Tensor | None,
    ) -> torch.Tensor:
        """sum_k w_k KL(P_T || P_S) at the visual positions, averaged over the samples with an image."""
        image_id = self._unwrapped(model).config.image_token_id
        student_visual = inputs["input_ids"] == image_id
        teacher_visual = teacher.ids == image_id
        has_image = student_visual.any(1)
        n_images = int(has_image.sum())
        if n_images == 0:
            return student_states.sum() * 0.0  # keeps the graph whole when a batch holds no image
        per_position = chunked_divergence(
            student_states[student_visual],
            teacher.states[teacher_visual],
            self._unwrapped(model).lm_head,
            self._unwrapped(self.teacher).lm_head,
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

    def _draw_candidates(self, model: torch.nn.Module, student_hidden: torch.Tensor) -> torch.Tensor:
        """d distinct candidates [N, d] per response position from the student's own next-token
        distribution there (no gradient; the image token is never proposed)."""
        cfg = self.loss_config
        student = self._unwrapped(model)
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

    def _tpa_divergence_sum(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        candidates: torch.Tensor,
        student_cache: Any,
        student_states: torch.Tensor,
        teacher_pass: TeacherPass,
    ) -> torch.Tensor:
        """KL(P_T || P_S) after each candidate, summed over the N * d candidates: by kv-continuation of both
        models' first-pass caches (distill/continuation.py), or (tpa_impl=ribbon) from one ribbon pass of
        each model (distill/tpa.py)."""
        cfg = self.loss_config
        student = self._unwrapped(model)
        teacher = self._unwrapped(self.teacher)
        d = cfg.tpa_candidates
        layout = response_layout(inputs["labels"])
        if cfg.tpa_impl == "ribbon":
            ids, positions, mask = ribbon_inputs(
                inputs["input_ids"], inputs["attention_mask"], slot_candidates(candidates, layout), layout
            )
            states = student.model(
                input_ids=ids,
                attention_mask=mask_for_attention(student, mask),
                position_ids=positions,
                pixel_values=inputs.get("pixel_values"),
            ).last_hidden_state[:, inputs["input_ids"].shape[1] :]
            student_hidden = candidate_states(states, layout, d)
            teacher_hidden = teacher_pass.tpa  # the candidates' states from its ribbon pass
        else:
            continued = to_continue(candidates, inputs["input_ids"], layout)
            self.tpa_candidate_counts["continued"] += int(continued.sum())
            self.tpa_candidate_counts["all"] += continued.numel()
            student_hidden = states_after_candidates(
                student.model.language_model,
                student.get_input_embeddings(),
                student_cache,
                student_states,
                inputs["input_ids"],
                inputs["attention_mask"],
                layout,
                candidates,
                continued,
            )
            with torch.no_grad():
                teacher_hidden = states_after_candidates(
                    teacher.model.language_model,
                    teacher.get_input_embeddings(),
                    teacher_pass.tpa,
                    teacher_pass.states,
                    teacher_pass.ids,
                    teacher_pass.attention,
                    response_layout(teacher_pass.labels),
                    candidates,
                    continued,
                )
        return self._divergence_sum(
            student_hidden, teacher_hidden, student.lm_head, teacher.lm_head, "forward_kl"
        )

    def _cross_entropy_sum(self, hidden: torch.Tensor, head: Any, targets: torch.Tensor) -> torch.Tensor:
        """The NLL of the targets summed over positions: liger-kernel's fused kernel, else chunked."""
        if self.loss_config.fused_kernel:
            return fused_cross_entropy_sum(hidden, head, targets, self.vocab_size)
        return chunked_cross_entropy(
            hidden, head, targets, self.loss_config.kl_chunk_size, self.vocab_size
        ).sum()

    def _divergence_sum(
        self,
        student_hidden: torch.Tensor,
        teacher_hidden: torch.Tensor,
        student_head: Any,
        teacher_head: Any,
        name: str,
    ) -> torch.Tensor:
        """A divergence summed over positions: liger-kernel's fused kernel with loss.fused_kernel, else chunked."""
        cfg = self.loss_config
        if cfg.fused_kernel:
            return fused_divergence_sum(
                student_hidden,
                teacher_hidden,
                student_head,
                teacher_head,
                name,
                self.vocab_size,
                cfg.temperature,
                cfg.jsd_beta,
            )
        return chunked_divergence(
            student_hidden,
            teacher_hidden,
            student_head,
            teacher_head,
            name,
            cfg.kl_chunk_size,
            self.vocab_size,
            cfg.temperature,
            cfg.jsd_beta,
            cfg.skew_alpha,
        ).sum()

    # -- LLaVADI -----------------------------------------------------------------------------------
    def _hidden_term(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        student_states: tuple[torch.Tensor, ...],
        teacher: TeacherPass,
    ) -> torch.Tensor:
        """Mean over aligned positions (response and/or visual) of the per-layer hidden-state MSE."""
        cfg = self.loss_config
        student = self._unwrapped(model)
        pairs = layer_pairs(cfg.hidden_layers, len(student_states) - 1, len(teacher.all_states) - 1)
        image_id = student.config.image_token_id
        selections = []  # (student positions, teacher positions) as boolean masks
        if cfg.hidden_tokens in ("response", "both"):
            pad = torch.zeros_like(inputs["labels"][:, :1], dtype=torch.bool)
            selections.append(
                (
                    torch.cat([inputs["labels"][:, 1:] != -100, pad], 1),
                    torch.cat([teacher.labels[:, 1:] != -100, pad], 1),
                )
            )
        if cfg.hidden_tokens in ("visual", "both"):
            selections.append((inputs["input_ids"] == image_id, teacher.ids == image_id))
        s_states = [torch.cat([student_states[s][m] for m, _ in selections]) for s, _ in pairs]
        t_states = [torch.cat([teacher.all_states[t][m] for _, m in selections]) for _, t in pairs]
        per_position = hidden_mse(s_states, t_states, getattr(student, PROJECTION_ATTRIBUTE))
        return per_position.sum() / (max(per_position.numel(), 1) * self.args.gradient_accumulation_steps)

    # -- EM-KD -------------------------------------------------------------------------------------
    def _emkd_terms(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        student_states: torch.Tensor,
        teacher: TeacherPass,
    ) -> dict[str, torch.Tensor]:
        """VSD and VLAD, each averaged over the samples with an image."""
        cfg = self.loss_config
        student = self._unwrapped(model)
        s_head, t_head = student.lm_head, self._unwrapped(self.teacher).lm_head
        image_id = student.config.image_token_id
        s_visual, t_visual = inputs["input_ids"] == image_id, teacher.ids == image_id
        s_text = inputs["attention_mask"].bool() & ~s_visual
        t_text = teacher.attention.bool() & ~t_visual
        vsd, vlad = [], []
        for b in torch.nonzero(s_visual.any(1)).flatten().tolist():
            s_vis, t_vis = student_states[b][s_visual[b]], teacher.states[b][t_visual[b]]
            with torch.no_grad():
                match = match_visual_tokens(
                    torch.softmax(s_head(s_vis.detach())[..., : self.vocab_size].float(), -1),
                    torch.softmax(t_head(t_vis)[..., : self.vocab_size].float(), -1),
                )
            s_vis, t_vis = s_vis[match.student], t_vis[match.teacher]
            if cfg.w_vsd > 0:
                vsd.append(
                    chunked_divergence(
                        s_vis,
                        t_vis,
                        s_head,
                        t_head,
                        "reverse_kl",
                        cfg.kl_chunk_size,
                        self.vocab_size,
                        cfg.temperature,
                    ).mean()
                )
            if cfg.w_vlad > 0:
                vlad.append(
                    affinity_loss(student_states[b][s_text[b]], s_vis, teacher.states[b][t_text[b]], t_vis)
                )
        scale = self.args.gradient_accumulation_steps
        zero = student_states.sum() * 0.0  # keeps the graph whole when a batch holds no image
        terms = {}
        if cfg.w_vsd > 0:
            terms["vsd"] = torch.stack(vsd).sum() / (len(vsd) * scale) if vsd else zero
        if cfg.w_vlad > 0:
            terms["vlad"] = torch.stack(vlad).sum() / (len(vlad) * scale) if vlad else zero
        return terms
