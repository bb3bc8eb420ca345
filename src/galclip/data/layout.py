"""On-disk layout of the public AstroCLIP data and of the PROVABGS catalogue.

The survey file is the HDF5 written by the AstroCLIP ``astroclip_desi`` builder: one group per
shard ("0".."9"), each holding, per row,
``image`` (152, 152, 3) float32 g,r,z flux (transposed survey cutout, (W, H, C)),
``spectrum`` (7781, 1) float32 on the DESI grid, ``redshift`` float32, ``targetid`` int64.
"""

from __future__ import annotations

import numpy as np

IMAGE_SHAPE = (152, 152, 3)
IMAGE_BANDS = ("g", "r", "z")
PIXEL_SCALE_ARCSEC = 0.262

DESI_WAVE_MIN = 3600.0
DESI_WAVE_MAX = 9824.0
DESI_N_BINS = 7781
SPECTRUM_SHAPE = (DESI_N_BINS, 1)

SURVEY_DATASETS = ("image", "spectrum", "redshift", "targetid")

CATALOGUE_COLUMNS = ("TARGETID", "Z_HP", "PROVABGS_LOGMSTAR_BF", "MAG_G", "MAG_R", "MAG_Z")


def desi_wavelength() -> np.ndarray:
    """DESI coadd wavelength grid: (7781,) float64, linear 3600-9824 Å in 0.8 Å steps."""
    return np.linspace(DESI_WAVE_MIN, DESI_WAVE_MAX, DESI_N_BINS)
