"""Losses against hand-computed values, and the label-less batch edge case."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("timm")

import torch  # noqa: E402

from vortex_data.format.schema import IGNORE_INDEX  # noqa: E402
from vortex_data.train.losses import (KendallWeights, berhu_loss, edge_aware_smoothness,  # noqa: E402
                                      kendall_combine, seg_loss)


def test_berhu_matches_hand_computation() -> None:
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0, 9.0], requires_grad=True)
    gt = torch.tensor([1.5, 2.0, 1.0, 4.0, 0.0])
    valid = gt > 0  # last pixel invalid: its residual 9 must not set c
    # residuals 0.5, 0, 2, 0 -> c = 0.4; 0.5 > c -> (0.25+0.16)/0.8; 2 > c -> (4+0.16)/0.8
    expected = (0.5125 + 0.0 + 5.2 + 0.0) / 4
    loss = berhu_loss(pred, gt, valid)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert pred.grad[4] == 0


def test_berhu_no_valid_pixel_is_connected_zero() -> None:
    pred = torch.rand(2, 1, 4, 4, requires_grad=True)
    loss = berhu_loss(pred, torch.zeros_like(pred), torch.zeros_like(pred, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred))


def test_seg_loss_all_ignored_is_exact_zero_with_gradient() -> None:
    logits = torch.randn(2, 6, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGNORE_INDEX, dtype=torch.long)
    loss = seg_loss(logits, target)
    assert loss.item() == 0.0 and loss.requires_grad and loss.grad_fn is not None
    loss.backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))


def test_seg_loss_matches_log_softmax_on_labelled_pixels() -> None:
    logits = torch.randn(1, 6, 2, 2)
    target = torch.tensor([[[0, IGNORE_INDEX], [5, 2]]])
    logp = torch.log_softmax(logits, 1)[0]
    expected = -(logp[0, 0, 0] + logp[5, 1, 0] + logp[2, 1, 1]) / 3
    assert seg_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_smoothness_matches_hand_computation() -> None:
    depth = torch.tensor([[[[1.0, 3.0], [2.0, 2.0]]]])  # mean 2 -> d* = [[.5, 1.5], [1, 1]]
    image = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]]).repeat(1, 3, 1, 1)
    # dx: |1.5-.5|*e^-1, |1-1|*e^0 -> mean (e^-1)/2 ; dy: |1-.5|*e^0, |1-1.5|*e^-1 -> mean (.5+.5e^-1)/2
    expected = math.exp(-1) / 2 + (0.5 + 0.5 * math.exp(-1)) / 2
    assert edge_aware_smoothness(depth, image).item() == pytest.approx(expected, rel=1e-6)


def test_smoothness_is_scale_free() -> None:
    depth, image = torch.rand(2, 1, 8, 8) + 0.5, torch.rand(2, 3, 8, 8)
    assert edge_aware_smoothness(depth * 7, image).item() == pytest.approx(edge_aware_smoothness(depth, image).item(), rel=1e-5)


def test_kendall_matches_hand_computation_and_skips_inactive() -> None:
    s = torch.tensor([0.5, -1.0], requires_grad=True)
    l_depth, l_seg = torch.tensor(2.0), torch.tensor(3.0)
    total = kendall_combine([l_depth, l_seg], s, [True, True])
    assert total.item() == pytest.approx(math.exp(-0.5) * 2 + 0.5 + math.exp(1.0) * 3 - 1.0, rel=1e-6)
    only_depth = kendall_combine([l_depth, l_seg], s, [True, False])
    assert only_depth.item() == pytest.approx(math.exp(-0.5) * 2 + 0.5, rel=1e-6)
    only_depth.backward()
    assert s.grad[1] == 0  # a label-less batch must not drag the seg log-variance down
    assert s.grad[0].item() == pytest.approx(1 - math.exp(-0.5) * 2, rel=1e-6)


def test_label_less_batch_gives_finite_loss_and_gradients() -> None:
    from vortex_data.train.model import DepthSegNet

    torch.manual_seed(0)
    model, kendall = DepthSegNet(max_depth=10.0), KendallWeights()
    rgb = torch.randn(2, 3, 64, 64)
    depth = torch.rand(2, 1, 64, 64) * 5
    seg = torch.full((2, 64, 64), IGNORE_INDEX, dtype=torch.long)
    out = model(rgb)
    losses = {"depth": berhu_loss(out["depth"], depth, depth > 0), "seg": seg_loss(out["seg"], seg)}
    assert losses["seg"].item() == 0.0
    total = kendall(losses, {"depth": True, "seg": False}) + 1e-3 * edge_aware_smoothness(out["depth"], rgb)
    total.backward()
    assert torch.isfinite(total)
    for name, p in list(model.named_parameters()) + list(kendall.named_parameters()):
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.seg_head.parameters())


def test_targets_beyond_the_head_range_are_left_out_and_counted() -> None:
    """The depth head cannot output max_depth or more; such targets are masked, not fitted."""
    from vortex_data.train.losses import reachable_depth

    target = torch.tensor([[0.0, 2.0, 9.99, 10.0, 31.5, 65.5]])
    valid, beyond = reachable_depth(target, max_depth=10.0)
    assert valid.tolist() == [[False, True, True, False, False, False]]
    assert int(beyond) == 3


def test_multitask_loss_ignores_unreachable_depth_and_logs_the_count() -> None:
    """The reproduction: one 30 m pixel (a DIODE-like far wall) sets berHu's threshold and dominates
    the mean unless it is left out."""
    from vortex_data.train.losses import MultiTaskLoss
    from vortex_data.train.model import DepthSegNet

    torch.manual_seed(0)
    net = DepthSegNet(max_depth=10.0)
    model = MultiTaskLoss(net, smooth_weight=0.0).eval()
    rgb = torch.randn(1, 3, 64, 64)
    depth = torch.full((1, 1, 64, 64), 3.0)
    far = depth.clone()
    far[0, 0, :2, :] = 30.0  # 128 pixels the sigmoid * 10 m head can never reach
    seg = torch.full((1, 64, 64), IGNORE_INDEX, dtype=torch.long)
    with torch.no_grad():
        _, near_parts = model(rgb, depth, seg)
        _, far_parts = model(rgb, far, seg)
        pred = net(rgb)["depth"].float()
    reachable = far < 10.0
    assert far_parts["depth"].item() == pytest.approx(berhu_loss(pred, far, reachable).item(), rel=1e-6)
    assert far_parts["depth"].item() != pytest.approx(berhu_loss(pred, far, far > 0).item(), rel=1e-3)
    assert far_parts["depth_px_beyond_range"].item() == 128
    assert near_parts["depth_px_beyond_range"].item() == 0
