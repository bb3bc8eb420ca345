"""The words every stage shares: the two modalities and the two catalogue labels.

Only Python: every package (the store included) may import this module, so each name is declared once.
"""

from __future__ import annotations

MODALITIES = ("image", "spectrum")
LABELS = ("redshift", "log_mstar")  # catalogue redshift (Z_HP) and log10 stellar mass in solar masses (PROVABGS)
