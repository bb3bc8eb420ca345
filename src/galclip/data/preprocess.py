"""Encoder input preprocessing, batched in torch so it runs wherever the encoders run.

Images: AstroCLIP (W, H, C) g,r,z flux -> (C, H, W) (the survey cutout's orientation), or (C, W, H)
as Stein et al.'s training loader fed its network (``np.swapaxes`` of the survey's (C, H, W)
cutout, then torchvision's ``ToTensor``, which reads its input as (H, W, C): the AstroCLIP rows
*are* that swapped array), centre crop 152 -> 96, then the Legacy
Survey grz -> RGB arcsinh mapping (Lupton et al. 2004 form as used by the survey viewer), or
the variant the Stein et al. (2021) model was trained with. Spectra: per-spectrum Z-score
(report §3.1), which, unlike Spender's own rest-frame median normalisation, does not need the
redshift and so does not leak it into zero-shot redshift scores.
"""

from __future__ import annotations

import numpy as np
import torch

# channel order of the output RGB planes: R <- z, G <- r, B <- g; per-band scales
RGB_SCALES = {"g": 6.0, "r": 3.4, "z": 2.2}
RGB_M = 0.03
RGB_Q = 20.0


ORIENTATIONS = ("survey", "stein")


def images_to_chw(images_whc: np.ndarray | torch.Tensor, orientation: str = "survey") -> torch.Tensor:
    """AstroCLIP storage order (B, W, H, 3) g,r,z -> bands first, float32: (B, 3, H, W) for "survey" (the
    cutout's own orientation), (B, 3, W, H) for "stein" (what ``ToTensor`` makes of the stored array, as Stein
    et al.'s loader fed the network: the survey image transposed)."""
    x = torch.as_tensor(images_whc, dtype=torch.float32)
    if orientation == "survey":
        return x.permute(0, 3, 2, 1)
    if orientation == "stein":
        return x.permute(0, 3, 1, 2)
    raise ValueError(f"unknown orientation {orientation!r}; choose one of {ORIENTATIONS}")


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size), the central pixels (Stein's CenterCrop)."""
    h, w = x.shape[-2:]
    top, left = h // 2 - size // 2, w // 2 - size // 2
    return x[..., top : top + size, left : left + size]


def grz_to_rgb(x: torch.Tensor, variant: str = "lupton") -> torch.Tensor:
    """(B, 3, H, W) g,r,z flux -> (B, 3, H, W) RGB in [0, 1] with R = z, G = r, B = g.

    I = mean_b max(0, x_b s_b + m), f(I) = asinh(Q I) / √Q. ``lupton``: RGB_b = (x_b s_b + m) f(I)/I.
    ``stein``: RGB_b = x_b (s_b + m f(I)/I), the variant the published Stein et al. weights saw.
    """
    rgb = x.flip(1)  # g,r,z -> z,r,g = R,G,B
    scales = torch.tensor([RGB_SCALES["z"], RGB_SCALES["r"], RGB_SCALES["g"]], dtype=x.dtype, device=x.device)
    scaled = rgb * scales[None, :, None, None]
    intensity = torch.clamp(scaled + RGB_M, min=0.0).mean(dim=1, keepdim=True)
    f_i = torch.asinh(RGB_Q * intensity) / np.sqrt(RGB_Q)
    intensity = intensity + (intensity == 0).to(x.dtype) * 1e-6
    if variant == "lupton":
        out = (scaled + RGB_M) * f_i / intensity
    elif variant == "stein":
        out = rgb * (scales[None, :, None, None] + RGB_M * f_i / intensity)
    else:
        raise ValueError(f"unknown RGB variant {variant!r}; choose 'lupton' or 'stein'")
    return out.clamp(0.0, 1.0)


def preprocess_images(
    images_whc: np.ndarray | torch.Tensor, crop: int, variant: str, orientation: str = "survey"
) -> torch.Tensor:
    """Survey cutouts (B, 152, 152, 3) -> encoder input (B, 3, crop, crop) RGB in [0, 1]."""
    return grz_to_rgb(centre_crop(images_to_chw(images_whc, orientation), crop), variant)


MASKED_PIXELS = (
    "pixels with inverse variance 0 (masked or no data) take no part in the mean and standard deviation, and reach "
    "the encoder as 0 (the spectrum's mean)"
)


def zscore_spectra(
    spectra: np.ndarray | torch.Tensor, eps: float = 1e-12, good: np.ndarray | torch.Tensor | None = None
) -> torch.Tensor:
    """Per-spectrum Z-score: (B, L) -> (B, L) with zero mean and unit variance along L.

    ``good`` (B, L) bool marks the pixels to use (the readers' inverse variance > 0): the others take no part in the
    mean and the standard deviation and come out as 0 (``MASKED_PIXELS``). Without ``good``, or when every pixel is
    good, every pixel is used, as for AstroCLIP's files, which carry no inverse variance."""
    y = torch.as_tensor(spectra, dtype=torch.float32)
    if y.ndim == 3:
        y = y.squeeze(-1)
    if good is not None:
        good = torch.as_tensor(good, dtype=torch.bool, device=y.device)
        if not bool(good.all()):
            w = good.to(y.dtype)
            n = w.sum(dim=1, keepdim=True).clamp(min=2.0)
            y = torch.where(good, y, torch.zeros_like(y))
            mean = (y * w).sum(dim=1, keepdim=True) / n
            std = torch.sqrt((((y - mean) * w) ** 2).sum(dim=1, keepdim=True) / (n - 1))
            return (y - mean) / (std + eps) * w
    mean = y.mean(dim=1, keepdim=True)
    std = y.std(dim=1, keepdim=True)
    return (y - mean) / (std + eps)
