"""AdamW parameter groups (slow encoder, fast decoder/heads/Kendall) and warmup + cosine decay by samples seen."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def _split_decay(params: list[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Weights (ndim >= 2) get weight decay; biases, norm scales and log-variances do not."""
    decay = [p for p in params if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in params if p.requires_grad and p.ndim < 2]
    return decay, no_decay


def build_optimizer(encoder: list[nn.Parameter], heads: list[nn.Parameter], kendall: list[nn.Parameter],
                    lr_encoder: float, lr_heads: float, weight_decay: float, cuda: bool = False) -> torch.optim.AdamW:
    """Groups in a fixed order (checkpoints depend on it): encoder, encoder-no-decay, heads, heads-no-decay, Kendall.

    On CUDA the fused implementation (one kernel per group and step instead of a handful per
    parameter tensor); elsewhere the foreach one. Their state is the same, so a checkpoint moves
    between them (a fused optimiser keeps its step counts on the device; loading moves them)."""
    enc_d, enc_nd = _split_decay(encoder)
    head_d, head_nd = _split_decay(heads)
    groups = [
        {"name": "encoder", "params": enc_d, "lr": lr_encoder, "weight_decay": weight_decay},
        {"name": "encoder_no_decay", "params": enc_nd, "lr": lr_encoder, "weight_decay": 0.0},
        {"name": "heads", "params": head_d, "lr": lr_heads, "weight_decay": weight_decay},
        {"name": "heads_no_decay", "params": head_nd, "lr": lr_heads, "weight_decay": 0.0},
        {"name": "kendall", "params": list(kendall), "lr": lr_heads, "weight_decay": 0.0},
    ]
    kind = {"fused": True} if cuda else {"foreach": True}
    return torch.optim.AdamW([g for g in groups if g["params"]], **kind)


class WarmupCosine:
    """lr factor: linear 0 -> 1 over ``warmup`` steps, then cosine 1 -> ``floor`` at ``total`` steps
    (fractional steps allowed: :class:`SampleSchedule` evaluates it at samples / reference batch)."""

    def __init__(self, warmup: int, total: int, floor: float = 0.01) -> None:
        self.warmup, self.total, self.floor = warmup, max(total, 1), floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t))


class SampleSchedule:
    """Warmup + cosine driven by samples seen, not by optimiser steps.

    ``lr = base_lr x WarmupCosine(samples / reference_batch)``, where ``reference_batch`` is the
    global batch (batch size x world size) the stage started with and ``warmup`` / ``total`` are
    counted in its steps. At an unchanged world size this equals the per-step schedule exactly;
    a run resumed at another world size or batch size continues the curve where the samples seen
    put it, and the stage ends after ``total x reference_batch`` samples.
    """

    def __init__(self, opt: torch.optim.Optimizer, warmup: int, total: int, floor: float, reference_batch: int) -> None:
        if reference_batch <= 0:
            raise ValueError(f"reference global batch must be positive, got {reference_batch}")
        self.optimizer, self.fn = opt, WarmupCosine(warmup, total, floor)
        self.base_lrs = [g["lr"] for g in opt.param_groups]
        self.reference_batch, self.samples = int(reference_batch), 0
        self._apply()

    @property
    def total_samples(self) -> int:
        return self.fn.total * self.reference_batch

    def advance(self, samples: int) -> None:
        """After an optimiser step that consumed ``samples`` (global) samples."""
        self.samples += int(samples)
        self._apply()

    def _apply(self) -> None:
        f = self.fn(self.samples / self.reference_batch)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * f

    def state_dict(self) -> dict:
        return {"samples": self.samples, "reference_batch": self.reference_batch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.samples, self.reference_batch = int(state["samples"]), int(state["reference_batch"])
        self.base_lrs = list(state["base_lrs"])
        self._apply()

