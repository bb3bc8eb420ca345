"""Legacy-Survey-like g,r,z cutouts: Sérsic profiles, Moffat seeing, sky noise.

Images are in nanomaggies per 0.262″ pixel, as Legacy Survey coadds are. Sky-noise levels
and their spread follow the log-normal fits to DECaLS per-pixel noise quoted by Stein et al.
(2021) for g, r, z.
"""

from __future__ import annotations

import numpy as np

# log-normal fits (shape, loc, scale) of DECaLS coadd per-pixel noise, nanomaggies (Stein et al. 2021)
SKY_NOISE_SHAPE = np.array([0.2264926, 0.2431146, 0.1334844])
SKY_NOISE_LOC = np.array([-0.0006735, -0.0023663, -0.0143416])
SKY_NOISE_SCALE = np.array([0.0037602, 0.0067417, 0.0260779])
SEEING_BAND_FACTOR = np.array([1.08, 1.0, 0.92])  # seeing is worse in the blue


def sersic_b(n: np.ndarray) -> np.ndarray:
    """b_n such that R_e encloses half the light (Ciotti & Bertin 1999 expansion)."""
    return 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n**2)


def sersic_profiles(
    n_sersic: np.ndarray,
    r_e_px: np.ndarray,
    axis_ratio: np.ndarray,
    position_angle: np.ndarray,
    centre: np.ndarray,
    size: int = 152,
    oversample: int = 2,
) -> np.ndarray:
    """Sérsic surface brightness, each stamp normalised to unit sum: (B,) params -> (B, size, size).

    Pixels are integrated by ``oversample``² sub-pixel samples; all light of the model is kept
    inside the stamp (normalised to the stamp sum). Computed with torch (multi-threaded, fp32).
    """
    import torch

    f32 = lambda a: torch.as_tensor(np.asarray(a, np.float32))[:, None, None]
    bn, inv_n = f32(sersic_b(np.asarray(n_sersic))), f32(1.0 / np.asarray(n_sersic))
    cos, sin = f32(np.cos(position_angle)), f32(np.sin(position_angle))
    inv_q, inv_re = f32(1.0 / np.asarray(axis_ratio)), f32(1.0 / np.asarray(r_e_px))
    cx, cy = f32(centre[:, 0]), f32(centre[:, 1])
    grid = torch.arange(size, dtype=torch.float32)
    sub = (torch.arange(oversample, dtype=torch.float32) + 0.5) / oversample - 0.5
    out = torch.zeros((len(n_sersic), size, size))
    for dy in sub:
        y = grid[None, :, None] + dy - cy
        for dx in sub:
            x = grid[None, None, :] + dx - cx
            u = (x * cos + y * sin) * inv_re
            v = (y * cos - x * sin) * (inv_q * inv_re)
            r = torch.sqrt(u * u + v * v)
            out += torch.exp(-bn * (torch.pow(r, inv_n) - 1.0))
    out /= out.sum(dim=(1, 2), keepdim=True)
    return out.numpy()


def moffat_kernels(fwhm_px: np.ndarray, size: int = 152, beta: float = 3.5) -> np.ndarray:
    """Unit-sum Moffat PSFs centred on pixel (0, 0) with wrap-around, for FFT: (B,) -> (B, size, size)."""
    alpha = np.asarray(fwhm_px, np.float32) / np.float32(2 * np.sqrt(2 ** (1 / beta) - 1))
    d = np.fft.fftfreq(size, 1.0 / size).astype(np.float32)
    r2 = d[None, :, None] ** 2 + d[None, None, :] ** 2
    k = (1 + r2 / (alpha[:, None, None] ** 2)) ** np.float32(-beta)
    return (k / k.sum(axis=(1, 2), keepdims=True)).astype(np.float32)


def convolve(images: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Circular FFT convolution (flux-conserving): (B, H, W) * (B, H, W) -> (B, H, W)."""
    import torch

    shape = images.shape[-2:]
    spec = torch.fft.rfft2(torch.as_tensor(images)) * torch.fft.rfft2(torch.as_tensor(kernels))
    return torch.fft.irfft2(spec, s=shape).numpy()


def draw_sky_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Per-galaxy, per-band sky noise σ in nanomaggies/pixel: (n, 3) for g, r, z."""
    sigma = rng.lognormal(np.log(SKY_NOISE_SCALE), SKY_NOISE_SHAPE, size=(n, 3)) + SKY_NOISE_LOC
    return np.clip(sigma, 0.001094, None)


def fibre_fraction(image: np.ndarray, centre: np.ndarray, radius_px: float) -> np.ndarray:
    """Share of a noiseless image's light inside a circular fibre: (B, H, W), (B, 2) -> (B,)."""
    size = image.shape[-1]
    grid = np.arange(size)
    r2 = (grid[None, None, :] - centre[:, 0, None, None]) ** 2 + (grid[None, :, None] - centre[:, 1, None, None]) ** 2
    inside = r2 <= radius_px**2
    return (image * inside).sum(axis=(1, 2)) / image.sum(axis=(1, 2))
