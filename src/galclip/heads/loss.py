"""Symmetric InfoNCE on cosine similarity (report eq. 1-2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_logits(z_x: torch.Tensor, z_y: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """S_C(z_i^x, z_j^y) / τ for all pairs: (K, D), (K, D) -> (K, K).

    Eq. 2 of the report prints squared norms in the denominator; cosine similarity, which the
    text names and the method uses, divides by the norms themselves.
    """
    return F.normalize(z_x, dim=-1) @ F.normalize(z_y, dim=-1).T / tau


def info_nce(z_x: torch.Tensor, z_y: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: the mean of eq. 1 in both directions (x -> y and y -> x).

    L = -1/K Σ_i log[exp(S_ii/τ) / Σ_j exp(S_ij/τ)], averaged with the same over columns.
    (K, D), (K, D) -> scalar. Row i of each input is one positive pair.
    """
    logits = cosine_logits(z_x, z_y, tau)
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
