"""Stein et al. (2021) MoCo-v2 ResNet-50 image encoder and its checkpoint layout.

The published PyTorch-Lightning checkpoint's ``state_dict`` holds the query encoder under
``encoder_q.*``: a torchvision ResNet-50 whose ``fc`` is the MoCo-v2 projection MLP
Linear(2048, 2048) -> ReLU -> Linear(2048, 128) (keys ``fc.0.*``, ``fc.2.*``), plus the key
encoder ``encoder_k.*`` and the queue buffers, which are not used. Features are the 2048-d
global-average-pool output (the penultimate layer).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from galclip.errors import CheckpointError
from galclip.state_dicts import load_exactly, read_checkpoint, with_prefix

logger = logging.getLogger(__name__)

IMAGE_FEATURE_DIM = 2048
QUERY_PREFIX = "encoder_q."


def moco_resnet50() -> nn.Module:
    """torchvision ResNet-50 with the MoCo-v2 projection MLP as ``fc`` (random weights)."""
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    model.fc = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(inplace=True), nn.Linear(2048, 128))
    return model


class ImageTrunk(nn.Module):
    """ResNet-50 up to global average pooling: (B, 3, H, W) -> (B, 2048)."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.body = nn.Sequential(
            resnet.conv1,
            resnet.bn1,
            resnet.relu,
            resnet.maxpool,
            resnet.layer1,
            resnet.layer2,
            resnet.layer3,
            resnet.layer4,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(self.body(x), 1), 1)


def load_stein_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Load the query encoder of a Stein et al. Lightning checkpoint.

    Returns the full ResNet-50 (with its fc MLP) and the fc MLP's state dict, whose layout
    ``0.weight`` (2048, 2048), ``0.bias``, ``2.weight`` (128, 2048), ``2.bias`` the image
    head reuses as its initialisation.
    """
    path = Path(path)
    ckpt = read_checkpoint(path, "image checkpoint", CheckpointError, weights_only=False)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a Lightning checkpoint dict with a 'state_dict'")
    query = with_prefix(state, QUERY_PREFIX)
    if not query:
        raise CheckpointError(
            f"{path}: no '{QUERY_PREFIX}*' keys; is this the Stein et al. MoCo-v2 checkpoint? "
            f"(first keys: {list(state)[:5]})"
        )
    model = moco_resnet50()
    load_exactly(model, query, path, "a ResNet-50 with the MoCo-v2 MLP (query encoder)", CheckpointError)
    fc_state = {k: v.clone() for k, v in with_prefix(query, "fc.").items()}
    return model, fc_state


def build_image_encoder(weights: str | Path | None, seed: int) -> tuple[ImageTrunk, dict[str, torch.Tensor] | None]:
    """The frozen trunk in eval mode plus the fc MLP weights (None for random weights)."""
    if weights is None:
        torch.manual_seed(seed)
        resnet, fc_state = moco_resnet50(), None
    else:
        resnet, fc_state = load_stein_checkpoint(weights)
    trunk = ImageTrunk(resnet).eval()
    for p in trunk.parameters():
        p.requires_grad_(False)
    return trunk, fc_state
