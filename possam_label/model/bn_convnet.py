"""A full-resolution BatchNorm CNN registered as a timm model, the small CLIP's image tower.

Why not an off-the-shelf timm layout: measured with a shape-tower probe (docs/small_model.md) on the
synthetic world, timm's ``convnext_atto`` (patchify stem) and ``resnet10t`` (strided stem) name
held-out shapes from mask-pooled features at 11-16 %, while this CNN (3x3 convolutions from the
first pixel, downsampling only by max-pooling) names 84 % base / 85 % novel shapes after 1500 steps.

Registering it with timm (``timm.create_model("possam_bn_convnet")``) lets the small CLIP stay a
plain open_clip custom model config (``vision_cfg.timm_model_name``) that open_clip's ``TimmModel``
builds like any timm trunk; PosSAM reads it through ``forward_features`` / ``forward_head``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

TIMM_NAME = "possam_bn_convnet"


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class BatchNormConvNet(nn.Module):
    """Stages of two 3x3 conv-BN-ReLU layers each followed by a 2x2 max-pool, then one more
    conv-BN-ReLU at the last width: stride ``2 ** len(widths)``.

    Follows timm's classifier interface so open_clip's ``TimmModel`` can wrap it.

    Args:
        widths: channels of the stages (5 stages: stride 32).
        num_classes: classifier outputs (0: none, ``forward_head`` returns pooled features).
        in_chans: input channels.
    """

    def __init__(self, widths: Sequence[int] = (24, 48, 96, 160, 256), num_classes: int = 0, in_chans: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_chans
        for width in widths:
            layers += _conv_bn_relu(c_in, width) + _conv_bn_relu(width, width) + [nn.MaxPool2d(2)]
            c_in = width
        layers += _conv_bn_relu(c_in, c_in)
        self.features = nn.Sequential(*layers)
        self.num_features = c_in
        self.num_classes = num_classes
        self.fc = nn.Linear(c_in, num_classes) if num_classes else nn.Identity()
        # timm's pretrained-config fields that open_clip reads (no pretrained weights exist).
        self.pretrained_cfg = self.default_cfg = {"num_classes": num_classes, "pool_size": None, "input_size": (in_chans, 64, 64)}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, C, H/32, W/32)."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) features -> (B, C) averaged over all cells (or (B, num_classes) logits)."""
        pooled = x.mean(dim=(-2, -1))
        return pooled if pre_logits else self.fc(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        if global_pool not in ("avg", ""):
            raise ValueError(f"{TIMM_NAME} only average-pools, got global_pool={global_pool!r}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


def _create(pretrained: bool = False, **kwargs: Any) -> BatchNormConvNet:
    if pretrained:
        raise ValueError(f"{TIMM_NAME} has no pretrained weights; pass the small CLIP's weight file instead")
    # timm passes its pretrained-config and download plumbing and open_clip a drop-path rate; this
    # CNN has none of them.
    for plumbing in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(plumbing, None)
    drop_path = kwargs.pop("drop_path_rate", 0.0)
    if drop_path:
        raise ValueError(f"{TIMM_NAME} has no drop path, got drop_path_rate={drop_path}")
    return BatchNormConvNet(**kwargs)


def register_with_timm() -> None:
    """Make ``timm.create_model("possam_bn_convnet")`` build :class:`BatchNormConvNet` (idempotent)."""
    import timm
    from timm.models import register_model

    if TIMM_NAME in timm.list_models(TIMM_NAME):
        return

    def possam_bn_convnet(pretrained: bool = False, **kwargs: Any) -> BatchNormConvNet:
        return _create(pretrained, **kwargs)

    possam_bn_convnet.__module__ = __name__
    register_model(possam_bn_convnet)
