"""EfficientViT-B1 encoder + a light FPN decoder with a metric depth head and a 6-class seg head."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from vortex_data.format.schema import NUM_CLASSES

from ..errors import InputError

ENCODER_NAME = "efficientvit_b1"
# What the decoder is built for; checked against timm's feature_info so a timm change that
# moves a stage fails loudly instead of silently mis-wiring the skips.
EXPECTED_REDUCTIONS = (4, 8, 16, 32)
EXPECTED_CHANNELS = (32, 64, 128, 256)


def create_encoder(weights: str | Path | None = None) -> nn.Module:
    """The timm EfficientViT-B1 feature extractor (strides 4/8/16/32), never downloading.

    ``weights`` is an optional local file (a timm/ImageNet state dict, .pth/.bin/.safetensors);
    timm loads it through its own pretrained path so classifier keys are filtered the same way
    as for hub weights.
    """
    import timm  # the [train] extra; imported here so the package works without it

    if weights is None:
        enc = timm.create_model(ENCODER_NAME, features_only=True, pretrained=False)
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"encoder weights file {path} does not exist")
        enc = timm.create_model(ENCODER_NAME, features_only=True, pretrained=True,
                                pretrained_cfg_overlay={"file": str(path)})
    reductions = tuple(enc.feature_info.reduction())
    channels = tuple(enc.feature_info.channels())
    if reductions != EXPECTED_REDUCTIONS or channels != EXPECTED_CHANNELS:
        raise RuntimeError(f"{ENCODER_NAME} features are strides {reductions} channels {channels}, "
                           f"expected {EXPECTED_REDUCTIONS} / {EXPECTED_CHANNELS}")
    return enc


class ConvBNReLU(nn.Sequential):
    """3x3 (or kxk) conv, batch norm, ReLU."""

    def __init__(self, cin: int, cout: int, k: int = 3) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FPNDecoder(nn.Module):
    """Top-down feature pyramid; every level is refined, upsampled to stride 4 and summed.

    Summing (not concatenating) keeps the fused map at ``width`` channels, which is what keeps
    the decoder light next to the 4.6 M-parameter encoder.
    """

    def __init__(self, in_channels: tuple[int, ...], width: int = 64) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.smooth = nn.ModuleList(ConvBNReLU(width, width) for _ in in_channels)
        self.fuse = ConvBNReLU(width, width)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Features at strides 4..32 -> one (B, width, H/4, W/4) map."""
        top = self.lateral[-1](feats[-1])
        pyramid = [self.smooth[-1](top)]
        for i in range(len(feats) - 2, -1, -1):
            top = self.lateral[i](feats[i]) + F.interpolate(top, size=feats[i].shape[-2:], mode="bilinear", align_corners=False)
            pyramid.append(self.smooth[i](top))
        size = feats[0].shape[-2:]
        fused = sum(F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pyramid)
        return self.fuse(fused)


class DepthHead(nn.Module):
    """Metric depth in (0, max_depth) metres: sigmoid * max_depth keeps it positive and bounded."""

    def __init__(self, width: int, max_depth: float) -> None:
        super().__init__()
        self.max_depth = float(max_depth)
        self.body = nn.Sequential(ConvBNReLU(width, width // 2), nn.Conv2d(width // 2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(x)) * self.max_depth


class SegHead(nn.Module):
    """Per-pixel class logits."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvBNReLU(width, width), nn.Conv2d(width, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class DepthSegNet(nn.Module):
    """RGB (B,3,H,W) -> {"depth": (B,1,H,W) metres, "seg": (B,C,H,W) logits}, H and W multiples of 32."""

    def __init__(self, max_depth: float = 10.0, num_classes: int = NUM_CLASSES, decoder_width: int = 64,
                 encoder_weights: str | Path | None = None) -> None:
        super().__init__()
        self.encoder = create_encoder(encoder_weights)
        self.decoder = FPNDecoder(EXPECTED_CHANNELS, decoder_width)
        self.depth_head = DepthHead(decoder_width, max_depth)
        self.seg_head = SegHead(decoder_width, num_classes)

    def forward(self, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = rgb.shape[-2:]
        if h % 32 or w % 32:
            raise InputError(f"input size {h}x{w} must be a multiple of 32 (encoder stride)")
        x = self.decoder(self.encoder(rgb))
        depth = F.interpolate(self.depth_head(x), size=(h, w), mode="bilinear", align_corners=False)
        seg = F.interpolate(self.seg_head(x), size=(h, w), mode="bilinear", align_corners=False)
        return {"depth": depth, "seg": seg}

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        """Decoder and both heads: everything trained at the higher learning rate."""
        enc = {id(p) for p in self.encoder.parameters()}
        return [p for p in self.parameters() if id(p) not in enc]
