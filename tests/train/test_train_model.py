"""The EfficientViT-B1 depth/seg network: shapes, bounds, strides, local weights."""

from __future__ import annotations

import pytest

timm = pytest.importorskip("timm")

import torch  # noqa: E402

from vortex_data.format.schema import NUM_CLASSES  # noqa: E402
from vortex_data.train.model import DepthSegNet, create_encoder  # noqa: E402


def test_encoder_strides_and_channels() -> None:
    enc = create_encoder()
    assert enc.feature_info.reduction() == [4, 8, 16, 32]
    assert enc.feature_info.channels() == [32, 64, 128, 256]
    feats = enc(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 16, 24), (64, 8, 12), (128, 4, 6), (256, 2, 3)]


def test_outputs_at_input_resolution_and_depth_bounded() -> None:
    model = DepthSegNet(max_depth=4.0).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96) * 50)  # extreme inputs saturate the sigmoid
    assert out["depth"].shape == (2, 1, 64, 96) and out["seg"].shape == (2, NUM_CLASSES, 64, 96)
    assert (out["depth"] >= 0).all() and (out["depth"] <= 4.0).all()
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.randn(1, 3, 60, 64))


def test_local_encoder_weights_are_loaded(tmp_path) -> None:
    torch.manual_seed(1)
    src = timm.create_model("efficientvit_b1", pretrained=False)  # a full classifier checkpoint
    path = tmp_path / "b1.pth"
    torch.save(src.state_dict(), path)
    model = DepthSegNet(encoder_weights=path)
    # timm's feature wrapper flattens module paths ("stem.in_conv" -> "stem_in_conv")
    flat = {k.replace(".", "_"): v for k, v in src.state_dict().items()}
    got = {k.replace(".", "_"): v for k, v in model.encoder.state_dict().items()}
    assert len(got) > 100 and set(got) <= set(flat)
    assert all(torch.equal(v, flat[k]) for k, v in got.items())
    assert not torch.equal(DepthSegNet().encoder.state_dict()["stem_in_conv.conv.weight"], got["stem_in_conv_conv_weight"])
    with pytest.raises(FileNotFoundError):
        DepthSegNet(encoder_weights=tmp_path / "missing.pth")
