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
# the same columns as the Multimodal Universe's PROVABGS files spell them, where they differ
CATALOGUE_ALIASES = {"PROVABGS_LOGMSTAR_BF": ("LOG_MSTAR",)}
# the PROVABGS properties beyond redshift and mass: raw quantity -> its columns, best fit first (DESI VAC, then MMU).
# Z_MW is a mass fraction, TAGE_MW in Gyr, AVGSFR_1GYR in M☉/yr; a 2-d column (posterior samples) is reduced to its
# median
PROPERTY_COLUMNS = {
    "Z_MW": ("PROVABGS_Z_MW_BF", "PROVABGS_Z_MW", "Z_MW"),
    "TAGE_MW": ("PROVABGS_TAGE_MW_BF", "PROVABGS_TAGE_MW", "TAGE_MW"),
    "AVGSFR": ("PROVABGS_AVGSFR_1GYR_BF", "PROVABGS_AVGSFR_1GYR", "AVG_SFR"),
}
POSITION_COLUMNS = ("RA", "DEC")


def desi_wavelength() -> np.ndarray:
    """DESI coadd wavelength grid: (7781,) float64, linear 3600-9824 Å in 0.8 Å steps."""
    return np.linspace(DESI_WAVE_MIN, DESI_WAVE_MAX, DESI_N_BINS)
