"""Survey pixels and fluxes for figures: rows read on demand from the survey files a store was made from."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from galclip.store import FeatureStore

if TYPE_CHECKING:
    from galclip.index.search import Index

logger = logging.getLogger(__name__)


class SurveyRows:
    """Reads survey rows (for galleries) by store row; blank when the survey files are gone."""

    def __init__(self, files: list[str], rows: np.ndarray, crop: int, rgb: str):
        from galclip.data.survey import SurveyReader

        self.rows, self.crop, self.rgb = rows, crop, rgb
        try:
            self.reader = SurveyReader(files) if files else None
        except Exception as err:  # noqa: BLE001 - galleries are optional; metrics do not need the pixels
            logger.warning("survey files of the store are not readable (%s): galleries will be blank", err)
            self.reader = None

    @classmethod
    def for_store(cls, store: FeatureStore, rows: np.ndarray) -> "SurveyRows":
        """Store rows (m,) of ``store``'s survey, drawn with the crop and RGB mapping the store was made with."""
        return cls(store.survey_files(), rows, *store.image_display())

    def image_rgb(self, idx: np.ndarray) -> np.ndarray:
        """Validation indices (m,) -> (m, crop, crop, 3) RGB in [0, 1]."""
        from galclip.extract.preprocess import preprocess_images

        if self.reader is None:
            return np.zeros((len(idx), self.crop, self.crop, 3), np.float32)
        imgs = np.concatenate([self.reader.read(int(r), int(r) + 1).image for r in self.rows[idx]])
        return preprocess_images(imgs, self.crop, self.rgb).permute(0, 2, 3, 1).numpy()

    def spectrum(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Validation indices (m,) -> (wave (7781,), flux (m, 7781))."""
        from galclip.data.layout import DESI_N_BINS, desi_wavelength

        if self.reader is None:
            return desi_wavelength(), np.zeros((len(idx), DESI_N_BINS), np.float32)
        return desi_wavelength(), np.concatenate([self.reader.read(int(r), int(r) + 1).spectrum for r in self.rows[idx]])


def plot_search_result(index: Index, result: dict, path: str | Path) -> Path:
    """Draw a search record (``Index.search``) of an indexed query: the query and its neighbours, into a PNG."""
    from galclip.evaluate.plots import plot_gallery

    pos = index.position(result["query"]["targetid"])
    neighbours = [index.position(n["targetid"]) for n in result["neighbours"]]
    rows = SurveyRows.for_store(index.open_store(), index.rows["row"])
    return plot_gallery(np.array([pos]), np.array([neighbours]), np.array([[n["similarity"] for n in result["neighbours"]]]),
                        result["query"]["modality"], result["target"], rows.image_rgb, rows.spectrum, Path(path),
                        title=f"targetid {result['query']['targetid']}")
