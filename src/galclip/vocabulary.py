"""The words every stage shares: the two modalities and the catalogue labels.

Only Python: every package (the store included) may import this module, so each name is declared once.
"""

from __future__ import annotations

MODALITIES = ("image", "spectrum")
# the labels every store holds (stores extracted before the PROVABGS properties hold only these):
# catalogue redshift (Z_HP) and log10 stellar mass in solar masses (PROVABGS)
LABELS = ("redshift", "log_mstar")
# every PROVABGS property, in the order reports list them
PROPERTIES = ("redshift", "log_mstar", "log_metallicity", "age", "log_ssfr")
# label -> (title with unit, catalogue column prefix, kind of scatter measure: "redshift", "log" (dex) or "linear")
LABEL_INFO = {
    "redshift": ("redshift z", "Z", "redshift"),
    "log_mstar": ("log M* [dex M☉]", "LOGMSTAR", "log"),
    "log_metallicity": ("log Z_MW (mass-weighted metallicity)", "LOGZMW", "log"),
    "age": ("t_age,MW [Gyr] (mass-weighted age)", "TAGEMW", "linear"),
    "log_ssfr": ("log sSFR [dex yr⁻¹] (1 Gyr average)", "LOGSSFR", "log"),
}


def label_info(name: str) -> tuple[str, str, str]:
    """(title, catalogue column prefix, scatter kind) of a label; a ``--label NAME=COLUMN`` label is "linear"."""
    return LABEL_INFO.get(name, (name, name.upper(), "linear"))
