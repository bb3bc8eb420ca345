"""Deterministic augmented views of survey cutouts and spectra, for cached variant features.

Image views follow Stein et al. (2021)'s training augmentations, applied in flux space before
the RGB mapping: rotation by an arbitrary angle, horizontal and vertical flips, jitter of the
crop centre (±7 px), extra PSF-like Gaussian blur and extra sky noise, each drawn per band from
the DECaLS log-normal fits of seeing and per-pixel noise, adding only the difference between
a drawn "final" and "true" level. Every random number of view ``v`` of galaxy ``t`` derives
from a hash of (t, v, seed), so a rerun — or another machine — reproduces it exactly.
Spectrum views are noise re-draws at the spectrum's own robust noise level.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from galclip.split import targetid_uniform

JITTER_PX = 7
# DECaLS log-normal fits (scipy's shape, loc, scale), g r z, as Stein et al.'s GaussianBlur and GaussianNoise
# use them: the PSF's Gaussian sigma already in PIXELS (their sigma = psf_size / 0.262 / 2.3548, fitted to the
# sweep catalogues; the draws go straight to skimage's gaussian as sigma), and the per-pixel noise in nanomaggies.
PSF_SHAPE, PSF_LOC, PSF_SCALE = (
    (0.2109966, 0.3008485, 0.3471172),
    (1.0807153, 1.2394326, 1.1928363),
    (1.3153171, 0.9164757, 0.8233702),
)
NOISE_SHAPE, NOISE_LOC, NOISE_SCALE = (
    (0.2264926, 0.2431146, 0.1334844),
    (-0.0006735, -0.0023663, -0.0143416),
    (0.0037602, 0.0067417, 0.0260779),
)


def _uniforms(targetid: np.ndarray, variant: int, seed: int, n: int) -> np.ndarray:
    """(B,) targetids -> (B, n) uniforms in (0, 1), a pure function of (targetid, variant, seed, column)."""
    base = (seed * 1_000_003 + variant) * 64
    u = np.stack([targetid_uniform(targetid, salt=base + j) for j in range(n)], axis=1)
    return np.clip(u, 1e-12, 1 - 1e-12)


def _lognormal(u: np.ndarray, shape, loc, scale) -> np.ndarray:
    """Inverse-CDF log-normal draws (scipy's (shape, loc, scale) parameterisation): (B, 3) -> (B, 3)."""
    from scipy.special import ndtri

    return np.exp(np.log(scale) + np.asarray(shape) * ndtri(u)) + np.asarray(loc)


def _extra_sigma(u_true: np.ndarray, u_final: np.ndarray, shape, loc, scale) -> np.ndarray:
    """sqrt(max(0, final² - true²)) for per-band levels drawn from one log-normal: (B, 3)."""
    true, final = _lognormal(u_true, shape, loc, scale), _lognormal(u_final, shape, loc, scale)
    return np.sqrt(np.clip(final**2 - true**2, 0.0, None))


def psf_blur_sigma_px(u_true: np.ndarray, u_final: np.ndarray) -> np.ndarray:
    """Extra PSF blur per band in pixels, (B, 3) uniforms twice -> (B, 3): a "true" and a "final" σ drawn from
    the DECaLS fits, and the blur that turns one into the other, sqrt(max(σ_final² - σ_true², 0))."""
    return _extra_sigma(u_true, u_final, PSF_SHAPE, PSF_LOC, PSF_SCALE)


def _gaussian_blur_fft(x: torch.Tensor, sigma_px: torch.Tensor) -> torch.Tensor:
    """Per-image, per-band Gaussian blur by FFT: (B, C, H, W), sigma (B, C) px -> (B, C, H, W)."""
    h, w = x.shape[-2:]
    pad = 16  # reflect-pad so the circular FFT does not wrap edges onto each other
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    hp, wp = xp.shape[-2:]
    fyp = torch.fft.fftfreq(hp, device=x.device, dtype=x.dtype)[:, None]
    fxp = torch.fft.rfftfreq(wp, device=x.device, dtype=x.dtype)[None, :]
    transfer = torch.exp(-2 * math.pi**2 * sigma_px[..., None, None] ** 2 * (fyp**2 + fxp**2))
    out = torch.fft.irfft2(torch.fft.rfft2(xp) * transfer, s=(hp, wp))
    return out[..., pad : pad + h, pad : pad + w]


def augment_images(
    images_chw: torch.Tensor, targetid: np.ndarray, variant: int, crop: int, seed: int = 0
) -> torch.Tensor:
    """One augmented view per cutout: (B, 3, 152, 152) g,r,z flux -> (B, 3, crop, crop) flux.

    Rotation, flips, jitter and the crop are one bilinear resampling (affine_grid); then
    per-band extra blur and noise. Deterministic in (targetid, variant, seed).
    """
    b, _, size, _ = images_chw.shape
    u = _uniforms(targetid, variant, seed, 18)
    dev, dt = images_chw.device, images_chw.dtype
    angle = torch.as_tensor(2 * np.pi * u[:, 0], dtype=dt, device=dev)
    flip_x = torch.as_tensor(np.where(u[:, 1] < 0.5, -1.0, 1.0), dtype=dt, device=dev)
    flip_y = torch.as_tensor(np.where(u[:, 2] < 0.5, -1.0, 1.0), dtype=dt, device=dev)
    jitter = np.floor(u[:, 3:5] * (2 * JITTER_PX + 1)) - JITTER_PX  # integer px in [-7, 7]
    scale = crop / size
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.zeros(b, 2, 3, dtype=dt, device=dev)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip_x, -sin * flip_y
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip_x, cos * flip_y
    theta[:, :, 2] = torch.as_tensor(2 * jitter / size, dtype=dt, device=dev)
    grid = F.affine_grid(theta, [b, 3, crop, crop], align_corners=False)
    x = F.grid_sample(images_chw, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    x = _gaussian_blur_fft(x, torch.as_tensor(psf_blur_sigma_px(u[:, 5:8], u[:, 8:11]), dtype=dt, device=dev))
    noise_sigma = _extra_sigma(u[:, 11:14], u[:, 14:17], NOISE_SHAPE, NOISE_LOC, NOISE_SCALE)
    noise_seeds = (u[:, 17] * 2**62).astype(np.int64)
    noise = torch.stack(
        [torch.randn(3, crop, crop, generator=torch.Generator().manual_seed(int(s)), dtype=dt) for s in noise_seeds]
    ).to(dev)
    return x + noise * torch.as_tensor(noise_sigma, dtype=dt, device=dev)[:, :, None, None]


def robust_noise_level(spectra: torch.Tensor) -> torch.Tensor:
    """Per-spectrum white-noise σ from first differences (1.4826·MAD/√2): (B, L) -> (B, 1)."""
    d = torch.diff(spectra, dim=1)
    mad = (d - d.median(dim=1, keepdim=True).values).abs().median(dim=1, keepdim=True).values
    return 1.4826 * mad / math.sqrt(2)


def augment_spectra(spectra: torch.Tensor, targetid: np.ndarray, variant: int, seed: int = 0) -> torch.Tensor:
    """A noise re-draw of each spectrum at its own noise level: (B, L) -> (B, L). Deterministic."""
    sigma = robust_noise_level(spectra)
    seeds = (_uniforms(targetid, variant, seed + 7919, 1)[:, 0] * 2**62).astype(np.int64)
    noise = torch.stack(
        [
            torch.randn(spectra.shape[1], generator=torch.Generator().manual_seed(int(s)), dtype=spectra.dtype)
            for s in seeds
        ]
    ).to(spectra.device)
    return spectra + noise * sigma
