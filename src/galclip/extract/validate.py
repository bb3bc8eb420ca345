"""Per-row input checks before the encoders: NaN/inf pixels or fluxes, blank images, flat spectra."""

from __future__ import annotations

import numpy as np

# quarantine codes stored per row in the feature store (0: good)
REASONS = {
    1: "image has NaN/inf pixels",
    2: "spectrum has NaN/inf values",
    3: "spectrum is constant (e.g. all zero): it cannot be z-scored",
    4: "image is all zero",
}


def bad_row_codes(images: np.ndarray, spectra: np.ndarray) -> np.ndarray:
    """(B, 152, 152, 3), (B, L) -> (B,) uint8 quarantine codes, 0 where the row is usable."""
    b = len(images)
    flat_i = images.reshape(b, -1)
    codes = np.zeros(b, np.uint8)
    finite_s = np.isfinite(spectra).all(axis=1)
    codes[~finite_s] = 2
    flat_s = np.where(finite_s[:, None], spectra, 0.0)
    codes[(codes == 0) & (flat_s.max(axis=1) == flat_s.min(axis=1))] = 3
    codes[(codes == 0) & ~(flat_i != 0).any(axis=1)] = 4
    codes[~np.isfinite(flat_i).all(axis=1)] = 1
    return codes
