"""AdamW parameter groups (slow encoder, fast decoder/heads/Kendall) and warmup + cosine decay."""

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
                    lr_encoder: float, lr_heads: float, weight_decay: float) -> torch.optim.AdamW:
    """Groups in a fixed order (checkpoints depend on it): encoder, encoder-no-decay, heads, heads-no-decay, Kendall."""
    enc_d, enc_nd = _split_decay(encoder)
    head_d, head_nd = _split_decay(heads)
    groups = [
        {"name": "encoder", "params": enc_d, "lr": lr_encoder, "weight_decay": weight_decay},
        {"name": "encoder_no_decay", "params": enc_nd, "lr": lr_encoder, "weight_decay": 0.0},
        {"name": "heads", "params": head_d, "lr": lr_heads, "weight_decay": weight_decay},
        {"name": "heads_no_decay", "params": head_nd, "lr": lr_heads, "weight_decay": 0.0},
        {"name": "kendall", "params": list(kendall), "lr": lr_heads, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]])


class WarmupCosine:
    """lr factor: linear 0 -> 1 over ``warmup`` steps, then cosine 1 -> ``floor`` at ``total`` steps.

    A class rather than a lambda so LambdaLR can pickle it into the checkpoint.
    """

    def __init__(self, warmup: int, total: int, floor: float = 0.01) -> None:
        self.warmup, self.total, self.floor = warmup, max(total, 1), floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t))


def build_scheduler(opt: torch.optim.Optimizer, warmup: int, total: int, floor: float) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(warmup, total, floor))
