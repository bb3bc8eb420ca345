"""Projection heads into the shared 128-d space (report §3.2-3.3).

Image head: the MoCo-v2 projection MLP, Linear(2048, 2048) -> ReLU -> Linear(2048, 128)
(~4.5M parameters), with the same module indices as the Stein checkpoint's ``fc`` so it can
start from those weights. Spectrum head: Linear(256, 256) -> ReLU -> Linear(256, 128) -> ReLU
-> Linear(128, 128) -> ReLU -> Linear(128, 128). Each head first standardises its input with
the training set's per-feature mean and standard deviation (buffers saved with the head).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

CONSTANT_STD = 1e-6  # a feature whose training std is at most this is constant: it is centred, not scaled


class RunningMoments:
    """Per-feature count, mean and sum of squared deviations over row blocks (D,) float64, merged exactly
    as Chan et al. (1979) do, so statistics of a store can be gathered one shard at a time."""

    def __init__(self, dim: int):
        self.n, self.mean, self.m2 = 0, np.zeros(dim), np.zeros(dim)

    def update(self, x: np.ndarray) -> RunningMoments:
        """Add rows x (b, D)."""
        x64 = np.asarray(x, np.float64)
        b = len(x64)
        if b == 0:
            return self
        mean_b = x64.mean(axis=0)
        m2_b = ((x64 - mean_b) ** 2).sum(axis=0)
        n = self.n + b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * b / n)
        self.n = n
        return self

    def standardisation(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) (D,) float64 with the population std; a feature constant on these rows (std <= 1e-6,
        e.g. a ReLU channel that never fires) gets std 1, so rows elsewhere that do excite it are not
        amplified a million-fold. The heads and the evaluation's raw-feature baselines both use it."""
        if self.n == 0:
            return np.zeros_like(self.mean), np.ones_like(self.mean)
        std = np.sqrt(self.m2 / self.n)
        return self.mean.copy(), np.where(std > CONSTANT_STD, std, 1.0)


def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of training rows x (n, D) -> two (D,) float64 arrays (see
    :meth:`RunningMoments.standardisation`)."""
    x = np.asarray(x)
    return RunningMoments(x.shape[1]).update(x).standardisation()


def standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(n, D) -> (n, D) float32: (x - mean) / std, computed in float64."""
    return ((np.asarray(x, np.float64) - mean) / std).astype(np.float32)


class Standardise(nn.Module):
    """(B, D) -> (B, D): (x - mean) / std with the training set's :func:`standardisation` held as buffers."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, x: np.ndarray | torch.Tensor) -> Standardise:
        """Set mean/std from (n, D) training features."""
        return self.set(*standardisation(np.asarray(x)))

    def set(self, mean: np.ndarray, std: np.ndarray) -> Standardise:
        """Set the buffers from (D,) statistics (float64 in, float32 held)."""
        self.mean.copy_(torch.from_numpy(np.asarray(mean)).float())
        self.std.copy_(torch.from_numpy(np.asarray(std)).float())
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Head(nn.Module):
    """Standardisation then an MLP: (B, D_in) -> (B, embed_dim)."""

    def __init__(self, sizes: tuple[int, ...], standardise: bool = True):
        super().__init__()
        self.sizes = tuple(sizes)
        self.norm = Standardise(sizes[0]) if standardise else nn.Identity()
        self.proj = mlp(self.sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))


class CLIPHeads(nn.Module):
    """Both heads: image (B, 2048) -> (B, 128), spectrum (B, 256) -> (B, 128); optional learnable τ."""

    def __init__(
        self,
        image_sizes: tuple[int, ...] = (2048, 2048, 128),
        spectrum_sizes: tuple[int, ...] = (256, 256, 128, 128, 128),
        standardise: bool = True,
        tau: float = 0.1,
        learn_tau: bool = False,
        tau_min: float = 0.01,
    ):
        super().__init__()
        self.image = Head(tuple(image_sizes), standardise)
        self.spectrum = Head(tuple(spectrum_sizes), standardise)
        self.tau_min = tau_min
        log_inv_tau = torch.tensor(float(np.log(1.0 / tau)))
        if learn_tau:
            self.log_inv_tau = nn.Parameter(log_inv_tau)
        else:
            self.register_buffer("log_inv_tau", log_inv_tau)

    @classmethod
    def from_config(cls, config) -> CLIPHeads:
        """Heads for a ``HeadConfig``."""
        return cls(
            config.image_sizes, config.spectrum_sizes, config.standardise, config.tau, config.learn_tau, config.tau_min
        )

    def tau(self) -> torch.Tensor:
        """Current temperature, clamped to >= tau_min (learnable τ is stored as log 1/τ)."""
        return torch.exp(-self.log_inv_tau.clamp(max=float(np.log(1.0 / self.tau_min))))

    @torch.no_grad()
    def load_moco_fc(self, fc_state: dict[str, torch.Tensor]) -> None:
        """Initialise the image head from the Stein checkpoint's fc MLP (keys 0.*, 2.*).

        With standardisation, W0 x + b0 = (W0 diag σ)((x - μ)/σ) + (b0 + W0 μ): the first layer is
        adjusted so the head still computes the pretrained projection. Fit the norm first.
        """
        state = {k: v.detach().clone().float() for k, v in fc_state.items()}
        if isinstance(self.image.norm, Standardise):
            mean, std = self.image.norm.mean, self.image.norm.std
            state["0.bias"] = state["0.bias"] + state["0.weight"] @ mean
            state["0.weight"] = state["0.weight"] * std[None, :]
        self.image.proj.load_state_dict(state, strict=True)

    @torch.no_grad()
    def embed(
        self, image_features: np.ndarray, spectrum_features: np.ndarray, batch_size: int = 4096
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, 2048), (N, 256) -> two (N, 128) float32 embeddings (not normalised)."""
        return (
            self.embed_modality("image", image_features, batch_size),
            self.embed_modality("spectrum", spectrum_features, batch_size),
        )

    def embed_modality(self, modality: str, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """One modality's features (N, 2048) for "image" or (N, 256) for "spectrum" -> (N, 128) float32
        embeddings (not normalised)."""
        head = {"image": self.image, "spectrum": self.spectrum}[modality]
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out = []
        with torch.no_grad():
            for lo in range(0, len(features), batch_size):
                out.append(
                    head(torch.as_tensor(features[lo : lo + batch_size], dtype=torch.float32, device=device)).cpu()
                )
        self.train(was_training)
        return (torch.cat(out) if out else torch.zeros(0, head.sizes[-1])).numpy()
