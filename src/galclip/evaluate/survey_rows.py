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

    def __init__(self, reader, rows: np.ndarray, crop: int, rgb: str):
        self.reader, self.rows, self.crop, self.rgb = reader, rows, crop, rgb

    @classmethod
    def for_store(cls, store: FeatureStore, rows: np.ndarray, blank_if_missing: bool = False) -> SurveyRows:
        """Store rows (m,) of ``store``'s survey, drawn with the crop and RGB mapping the store was made with.

        Survey files that changed since extraction are refused
        (:func:`galclip.data.survey.open_recorded_survey`), so no panel
        ever shows another galaxy than the one named; with ``blank_if_missing`` files that are gone give blank
        panels instead (galleries are optional, the metrics do not need the pixels)."""
        from galclip.data.survey import open_recorded_survey

        missing = [f for f in store.survey_files() if not Path(f).exists()]
        if blank_if_missing and (missing or not store.survey_files()):
            logger.warning(
                "the survey files of %s are not here (%s): galleries will be blank",
                store.path,
                missing[0] if missing else "none recorded",
            )
            return cls(None, rows, *store.image_display())
        return cls(open_recorded_survey(store.provenance, store.path, store.targetids), rows, *store.image_display())

    def image_rgb(self, idx: np.ndarray) -> np.ndarray:
        """Validation indices (m,) -> (m, crop, crop, 3) RGB in [0, 1]."""
        from galclip.data.preprocess import preprocess_images

        if self.reader is None:
            return np.zeros((len(idx), self.crop, self.crop, 3), np.float32)
        imgs = np.concatenate([self.reader.read(int(r), int(r) + 1).image for r in self.rows[idx]])
        return preprocess_images(imgs, self.crop, self.rgb).permute(0, 2, 3, 1).numpy()

    def spectrum(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Validation indices (m,) -> (wave (7781,), flux (m, 7781))."""
        from galclip.data.layout import DESI_N_BINS, desi_wavelength

        if self.reader is None:
            return desi_wavelength(), np.zeros((len(idx), DESI_N_BINS), np.float32)
        return desi_wavelength(), np.concatenate(
            [self.reader.read(int(r), int(r) + 1).spectrum for r in self.rows[idx]]
        )


def plot_search_result(index: Index, result: dict, path: str | Path) -> Path:
    """Draw a search record (``Index.search``) of an indexed query: the query and its neighbours, into a PNG."""
    from galclip.evaluate.plots import plot_gallery

    pos = index.position(result["query"]["targetid"])
    neighbours = [index.position(n["targetid"]) for n in result["neighbours"]]
    rows = SurveyRows.for_store(index.open_store(), index.rows["row"])
    return plot_gallery(
        np.array([pos]),
        np.array([neighbours]),
        np.array([[n["similarity"] for n in result["neighbours"]]]),
        result["query"]["modality"],
        result["target"],
        rows.image_rgb,
        rows.spectrum,
        Path(path),
        title=f"targetid {result['query']['targetid']}",
        names=index.rows["targetid"],
    )
