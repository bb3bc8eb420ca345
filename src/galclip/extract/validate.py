"""Per-row input checks before the encoders: NaN/inf pixels or fluxes, blank images, flat spectra."""

from __future__ import annotations

import numpy as np


def bad_row_codes(images: np.ndarray | None, spectra: np.ndarray | None) -> np.ndarray:
    """(B, 152, 152, 3), (B, L) -> (B,) uint8 quarantine codes (``galclip.store.quarantine.REASONS``), 0 where
    the row is usable. Either may be None (a single-modality file): only the other is checked."""
    b = len(images) if images is not None else len(spectra)
    codes = np.zeros(b, np.uint8)
    if spectra is not None:
        finite_s = np.isfinite(spectra).all(axis=1)
        codes[~finite_s] = 2
        flat_s = np.where(finite_s[:, None], spectra, 0.0)
        codes[(codes == 0) & (flat_s.max(axis=1) == flat_s.min(axis=1))] = 3
    if images is not None:
        flat_i = images.reshape(b, -1)
        codes[(codes == 0) & ~(flat_i != 0).any(axis=1)] = 4
        codes[~np.isfinite(flat_i).all(axis=1)] = 1
    return codes
