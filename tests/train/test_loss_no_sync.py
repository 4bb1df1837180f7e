"""The loss without host synchronisation against the implementation it replaced (kept below as the
reference), on random, partly-labelled and all-ignore batches; and no graph break when dynamo
traces the loss and forward + loss (a ``bool(tensor)`` or ``.item()`` on the device's data breaks
the graph, and is a device-to-host synchronisation on a GPU)."""

from __future__ import annotations

import pytest

pytest.importorskip("timm")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vortex_data.format.schema import IGNORE_INDEX  # noqa: E402
from vortex_data.train.losses import (BERHU_C_FRACTION, berhu_loss, edge_aware_smoothness,  # noqa: E402
                                      kendall_combine, reachable_depth, seg_loss)

# Tolerance: the new mean is a masked sum over all pixels divided by the count, the old one
# summed the gathered valid pixels; the summation order differs, nothing else. float32 sums of
# a few thousand terms agree to ~1e-6 relative.
RTOL, ATOL = 1e-5, 1e-7


# ---- the reference: the implementation before (host branches on tensor values)

def _zero_like_graph(t):
    return (t * 0).sum()


def old_berhu(pred, target, valid):
    if not bool(valid.any()):
        return _zero_like_graph(pred)
    r = (pred - target).abs()[valid]
    c = (BERHU_C_FRACTION * r.max()).detach().clamp_min(1e-6)
    quad = (r * r + c * c) / (2 * c)
    return torch.where(r <= c, r, quad).mean()


def old_seg(logits, target, ignore_index=IGNORE_INDEX):
    if not bool((target != ignore_index).any()):
        return _zero_like_graph(logits)
    return F.cross_entropy(logits.float(), target, ignore_index=ignore_index)


def old_kendall(losses, log_vars, active):
    total = _zero_like_graph(log_vars)
    for i, (loss, on) in enumerate(zip(losses, active)):
        s = log_vars[i]
        total = total + (torch.exp(-s) * loss + s if on else loss * 0 + s * 0)
    return total


def old_total(depth_pred, logits, depth, seg, rgb, log_vars, max_depth=10.0, smooth_weight=1e-3):
    valid, _ = reachable_depth(depth, max_depth)
    losses = [old_berhu(depth_pred, depth, valid), old_seg(logits, seg)]
    active = [bool(valid.any()), bool((seg != IGNORE_INDEX).any())]
    return old_kendall(losses, log_vars, active) + smooth_weight * edge_aware_smoothness(depth_pred, rgb)


def new_total(depth_pred, logits, depth, seg, rgb, log_vars, max_depth=10.0, smooth_weight=1e-3):
    valid, _ = reachable_depth(depth, max_depth)
    losses = [berhu_loss(depth_pred, depth, valid), seg_loss(logits, seg)]
    active = [valid.any(), (seg != IGNORE_INDEX).any()]
    return kendall_combine(losses, log_vars, active) + smooth_weight * edge_aware_smoothness(depth_pred, rgb)


def batch(kind: str, seed: int = 0, b: int = 3, h: int = 16, w: int = 20):
    g = torch.Generator().manual_seed(seed)
    pred = (torch.rand(b, 1, h, w, generator=g) * 9.9 + 0.05).requires_grad_()
    logits = torch.randn(b, 6, h, w, generator=g).requires_grad_()
    depth = torch.rand(b, 1, h, w, generator=g) * 12  # some beyond the 10 m head: left out
    depth[torch.rand(b, 1, h, w, generator=g) < 0.3] = 0  # invalid pixels
    seg = torch.randint(0, 6, (b, h, w), generator=g)
    if kind == "partly-labelled":
        seg[1:] = IGNORE_INDEX  # one labelled sample of three, as a mixture batch
        seg[0, : h // 2] = IGNORE_INDEX
    elif kind == "all-ignore":
        seg[:] = IGNORE_INDEX
        depth[:] = 0  # nothing to supervise at all
    rgb = torch.randn(b, 3, h, w, generator=g)
    log_vars = torch.tensor([0.3, -0.2], requires_grad=True)
    return pred, logits, depth, seg, rgb, log_vars


def grads(total_fn, args):
    pred, logits, depth, seg, rgb, log_vars = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]
    total = total_fn(pred, logits, depth, seg, rgb, log_vars)
    total.backward()
    return total.detach(), pred.grad, logits.grad, log_vars.grad


@pytest.mark.parametrize("kind", ["random", "partly-labelled", "all-ignore"])
def test_no_sync_loss_equals_the_old_one_in_value_and_gradient(kind):
    for seed in range(3):
        args = batch(kind, seed)
        new, old = grads(new_total, args), grads(old_total, args)
        for a, b, what in zip(new, old, ("total", "d/dpred", "d/dlogits", "d/dlog_vars")):
            assert torch.isfinite(a).all(), (kind, what)
            torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=f"{kind} {what}")


def test_all_ignore_batch_is_an_exact_connected_zero_with_zero_gradients():
    pred, logits, depth, seg, _, log_vars = batch("all-ignore")
    valid, beyond = reachable_depth(depth, 10.0)
    d, s = berhu_loss(pred, depth, valid), seg_loss(logits, seg)
    assert d.item() == 0.0 and s.item() == 0.0 and d.grad_fn is not None and s.grad_fn is not None
    total = kendall_combine([d, s], log_vars, [valid.any(), (seg != IGNORE_INDEX).any()])
    assert total.item() == 0.0
    total.backward()
    for t in (pred, logits, log_vars):
        assert t.grad is not None and torch.equal(t.grad, torch.zeros_like(t))
    assert int(beyond) == 0


def test_berhu_threshold_is_set_by_valid_pixels_only():
    """A huge residual on an invalid pixel must not set c (the old test's case, on the new code)."""
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0, 9.0])
    gt = torch.tensor([1.5, 2.0, 1.0, 4.0, 0.0])
    assert berhu_loss(pred, gt, gt > 0).item() == pytest.approx((0.5125 + 5.2) / 4, rel=1e-6)


def test_a_nan_target_off_the_mask_leaves_gradients_finite():
    """Indexing (the old loss) never differentiated masked-out pixels; a mask by torch.where must
    not either (abs of a NaN residual would give 0 x NaN = NaN in backward)."""
    pred = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    target = torch.tensor([1.5, float("nan"), 2.0])
    valid = torch.tensor([True, False, True])
    berhu_loss(pred, target, valid).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[1] == 0


def test_loss_traces_without_graph_break():
    args = batch("partly-labelled")

    def loss(pred, logits, depth, seg, rgb, log_vars):
        return new_total(pred, logits, depth, seg, rgb, log_vars)

    explained = torch._dynamo.explain(loss)(*args)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    explained = torch._dynamo.explain(old_total)(*args)
    assert explained.graph_break_count > 0  # the check can fail: the old loss breaks the graph


def test_forward_and_loss_trace_without_graph_break():
    """The trainer's module (EfficientViT-B1 + decoder + every loss term), as torch.compile sees it."""
    from vortex_data.train.losses import MultiTaskLoss
    from vortex_data.train.model import DepthSegNet

    torch.manual_seed(0)
    module = MultiTaskLoss(DepthSegNet(10.0), 1e-3)
    _, _, depth, seg, _, _ = batch("partly-labelled", b=2, h=64, w=64)
    explained = torch._dynamo.explain(module)(torch.randn(2, 3, 64, 64), depth, seg)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
