"""Training losses: berHu depth, ignore-aware cross-entropy, edge-aware smoothness, Kendall weighting.

Every loss returns a scalar that stays attached to the prediction's graph even when the batch
holds nothing to supervise (it is then an exact 0 with zero gradients), so DDP never sees an
unused parameter and the optimiser never sees a NaN.

None of them reads a tensor's value on the host: a mean over the pixels a mask keeps is the
masked sum divided by ``clamp_min(count, 1)`` (0 / 1 = 0 when the mask is empty), and a choice
that depends on the data is a ``torch.where``. So a step issues no device-to-host
synchronisation, and ``torch.compile`` traces forward + loss as one graph (no graph break).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from vortex_data.format.schema import IGNORE_INDEX

BERHU_C_FRACTION = 0.2


def reachable_depth(target: torch.Tensor, max_depth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, count): the pixels the depth loss supervises and how many valid ones it leaves out.

    The depth head is ``sigmoid * max_depth``, so a target at or beyond ``max_depth`` can never be
    fitted; kept in the loss its residual would only grow, set berHu's threshold c (0.2 x the
    batch's largest residual) and drown the reachable pixels. DIODE's laser scans reach tens of
    metres indoors. Such pixels are left out (as evaluation leaves out gt >= max_depth) and counted.
    """
    valid = target > 0
    reachable = valid & (target < max_depth)
    return reachable, (valid & ~reachable).sum()


def berhu_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Reverse Huber over valid pixels (Laina et al., "Deeper Depth Prediction with FCRNs", 3DV 2016).

    With r = |pred - target| on valid pixels and c = 0.2 * max(r) over the batch (c carries no
    gradient):  B(r) = r if r <= c else (r^2 + c^2) / (2c);  the loss is the mean of B(r).
    Invalid pixels get r = 0 before the max (r >= 0, so the max over valid pixels is unchanged)
    and are left out of the sum; with no valid pixel the loss is 0 / 1, an exact connected 0.
    """
    r = torch.where(valid, pred - target, 0.0).abs()  # abs after the mask: a NaN target off it gets gradient 0, not NaN
    c = (BERHU_C_FRACTION * r.amax()).detach().clamp_min(1e-6)  # c = 0 only when the fit is exact
    quad = (r * r + c * c) / (2 * c)
    b = torch.where(valid & (r > c), quad, r)  # r = 0 off the mask
    return b.sum() / valid.sum().clamp_min(1)


def seg_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels: -1/N sum_p log softmax(logits_p)[y_p], y_p != 255.

    PyTorch's mean reduction divides by the number of labelled pixels, which is 0/0 = NaN when a
    batch has no labels (all samples label-less); the sum over labelled pixels divided by
    ``clamp_min(N, 1)`` is the same mean, and an exact, connected 0 then.
    """
    total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return total / (target != ignore_index).sum().clamp_min(1)


def edge_aware_smoothness(depth: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Edge-aware first-order smoothness (Godard et al., Monodepth2, ICCV 2019, on mean-normalised depth).

    d* = d / mean(d) per image;  L = mean(|dx d*| exp(-mean_c |dx I|)) + mean(|dy d*| exp(-mean_c |dy I|)).
    Normalising by the mean makes the term scale-free, so it cannot be lowered by shrinking depth.
    """
    d = depth / depth.mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    dx_d = (d[..., :, 1:] - d[..., :, :-1]).abs()
    dy_d = (d[..., 1:, :] - d[..., :-1, :]).abs()
    dx_i = (image[..., :, 1:] - image[..., :, :-1]).abs().mean(1, keepdim=True)
    dy_i = (image[..., 1:, :] - image[..., :-1, :]).abs().mean(1, keepdim=True)
    return (dx_d * torch.exp(-dx_i)).mean() + (dy_d * torch.exp(-dy_i)).mean()


def kendall_combine(losses: list[torch.Tensor], log_vars: torch.Tensor,
                    active: Sequence[bool | torch.Tensor]) -> torch.Tensor:
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    L = sum_i exp(-s_i) L_i + s_i with s_i = log sigma_i^2 learned per task. The paper writes
    1/(2 sigma^2) L + log sigma for regression; we use the common factor-free form (both terms
    doubled), which has the same minimiser s_i = log L_i for every task and treats
    regression and classification alike.

    A task that is not ``active`` (no supervision in this batch; a bool or a 0-d bool tensor,
    so the choice stays on the device) contributes 0 * s_i: including its +s_i term would push
    s_i down on every label-less batch and blow up the task's weight.
    """
    total = (log_vars * 0).sum()  # an exact 0 on the graph, so every s_i gets a gradient
    for i, (loss, on) in enumerate(zip(losses, active)):
        s = log_vars[i]
        total = total + torch.where(torch.as_tensor(on, device=s.device), torch.exp(-s) * loss + s,
                                    loss * 0 + s * 0)
    return total


class KendallWeights(nn.Module):
    """One learned log-variance s_i per task, initialised to 0 (weight 1)."""

    def __init__(self, tasks: tuple[str, ...] = ("depth", "seg")) -> None:
        super().__init__()
        self.tasks = tasks
        self.log_vars = nn.Parameter(torch.zeros(len(tasks)))

    def forward(self, losses: dict[str, torch.Tensor], active: dict[str, bool | torch.Tensor]) -> torch.Tensor:
        return kendall_combine([losses[t] for t in self.tasks], self.log_vars, [active[t] for t in self.tasks])


class MultiTaskLoss(nn.Module):
    """Network + Kendall weights + smoothness in one module, so DDP sees (and syncs) every parameter
    and torch.compile captures forward + loss as one graph (no host sync inside)."""

    def __init__(self, net: nn.Module, smooth_weight: float) -> None:
        super().__init__()
        self.net = net
        self.kendall = KendallWeights(("depth", "seg"))
        self.smooth_weight = smooth_weight

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor, seg: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.net(rgb)
        pred = out["depth"].float()
        valid, beyond = reachable_depth(depth, self.net.depth_head.max_depth)
        losses = {"depth": berhu_loss(pred, depth, valid), "seg": seg_loss(out["seg"], seg)}
        active = {"depth": valid.any(), "seg": (seg != IGNORE_INDEX).any()}  # on the device: no host sync
        smooth = edge_aware_smoothness(pred, rgb.float())
        total = self.kendall(losses, active) + self.smooth_weight * smooth
        parts = {"loss": total.detach(), "depth": losses["depth"].detach(), "seg": losses["seg"].detach(),
                 "smooth": smooth.detach(), "depth_px_beyond_range": beyond.detach().float()}
        return total, parts
