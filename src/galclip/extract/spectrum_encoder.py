"""Spender spectrum encoder (Melchior et al. 2023) with the official module and key names.

Architecture (``spender.SpectrumEncoder``): three blocks Conv1d -> InstanceNorm1d -> PReLU ->
Dropout with 1->128 (k=5), 128->256 (k=11), 256->512 (k=21), max-pooling 5 and 11 after the
first two; the 512 channels split into values h and keys a (256 each), softmax of a over
wavelength, e = Σ_λ h·a (report eq. 3): the 256-d attended features used by AstroCLIP. The
MLP to the latents (256 -> 128 -> 64 -> 32 -> n_latent) is kept so checkpoints load strictly.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from galclip.errors import CheckpointError
from galclip.state_dicts import load_exactly, read_checkpoint, with_prefix

logger = logging.getLogger(__name__)

SPECTRUM_FEATURE_DIM = 256
ENCODER_PREFIX = "encoder."


class SpenderMLP(nn.Sequential):
    """Linear/activation/Dropout stack with spender's indices: (B, n_in) -> (B, n_out)."""

    def __init__(self, n_in: int, n_out: int, n_hidden: tuple[int, ...] = (128, 64, 32)):
        sizes = [n_in, *n_hidden, n_out]
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 2):
            layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.PReLU(sizes[i + 1]), nn.Dropout(0.0)]
        layers.append(nn.Linear(sizes[-2], sizes[-1]))
        super().__init__(*layers)


class SpenderSpectrumEncoder(nn.Module):
    """(B, L) spectra -> (B, 256) attention features (``features``) or (B, n_latent) latents."""

    def __init__(self, n_latent: int = 6, n_aux: int = 0):
        super().__init__()
        filters, sizes = (128, 256, 512), (5, 11, 21)
        blocks = []
        for i, (f, s) in enumerate(zip(filters, sizes)):
            f_in = 1 if i == 0 else filters[i - 1]
            blocks.append(
                nn.Sequential(
                    nn.Conv1d(f_in, f, kernel_size=s, padding=s // 2),
                    nn.InstanceNorm1d(f),
                    nn.PReLU(f),
                    nn.Dropout(0.0),
                )
            )
        self.conv1, self.conv2, self.conv3 = blocks
        self.pool1, self.pool2 = (nn.MaxPool1d(s, padding=s // 2) for s in sizes[:2])
        self.softmax = nn.Softmax(dim=-1)
        self.n_feature = filters[-1] // 2
        self.mlp = SpenderMLP(self.n_feature + n_aux, n_latent)

    def features(self, y: torch.Tensor) -> torch.Tensor:
        """e = Σ_λ h · softmax_λ(a): (B, L) -> (B, 256)."""
        x = self.pool1(self.conv1(y.unsqueeze(1)))
        x = self.pool2(self.conv2(x))
        x = self.conv3(x)
        h, a = torch.split(x, [self.n_feature, self.n_feature], dim=1)
        return torch.sum(h * self.softmax(a), dim=2)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(y))


def _encoder_state(path: Path, model_index: int) -> dict[str, torch.Tensor]:
    ckpt = read_checkpoint(path, "spectrum checkpoint", CheckpointError, weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path}: expected an official Spender checkpoint {{'model': state_dict, ...}}")
    state = ckpt["model"]
    if isinstance(state, (list, tuple)):
        if not 0 <= model_index < len(state):
            raise CheckpointError(f"{path}: holds {len(state)} models; model index {model_index} is out of range")
        state = state[model_index]
    if not hasattr(state, "items"):
        raise CheckpointError(f"{path}: 'model' is neither a state dict nor a list of them")
    enc = with_prefix(state, ENCODER_PREFIX)
    if not enc:
        raise CheckpointError(f"{path}: no '{ENCODER_PREFIX}*' keys (first keys: {list(state)[:5]})")
    return enc


def load_spender_checkpoint(path: str | Path, model_index: int = 0) -> SpenderSpectrumEncoder:
    """Encoder of an official Spender checkpoint; instrument buffers are ignored."""
    path = Path(path)
    enc = {k: v for k, v in _encoder_state(path, model_index).items() if not k.startswith("instrument.")}
    if "mlp.0.weight" not in enc:
        raise CheckpointError(f"{path}: missing 'encoder.mlp.0.weight'; not a Spender SpectrumEncoder")
    n_in = enc["mlp.0.weight"].shape[1]
    last = max(int(k.split(".")[1]) for k in enc if k.startswith("mlp.") and k.endswith(".weight") and enc[k].ndim == 2)
    n_latent = enc[f"mlp.{last}.weight"].shape[0]
    model = SpenderSpectrumEncoder(n_latent=n_latent, n_aux=n_in - SPECTRUM_FEATURE_DIM)
    load_exactly(model, enc, path, "Spender's SpectrumEncoder (its 'encoder.*' keys)", CheckpointError)
    return model


def build_spectrum_encoder(weights: str | Path | None, seed: int) -> SpenderSpectrumEncoder:
    """The frozen encoder in eval mode (seeded random weights when ``weights`` is None)."""
    if weights is None:
        torch.manual_seed(seed + 1)
        model = SpenderSpectrumEncoder()
    else:
        model = load_spender_checkpoint(weights)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
