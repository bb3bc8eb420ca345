"""The row reader of an extraction: batches of survey rows for a DataLoader, bad rows neutralised."""

from __future__ import annotations

import numpy as np
import torch

from galclip.data.sources import SurveySource
from galclip.data.survey import SurveyBatch
from galclip.extract.validate import bad_row_codes


def read_rows(reader: SurveySource, lo: int, hi: int) -> tuple[SurveyBatch, np.ndarray]:
    """Survey rows [lo, hi) and their quarantine codes (hi - lo,) uint8 (0 for a usable row): what extraction
    encodes and what it stores in ``quarantine``. The codes depend on the input rows alone, never on an encoder."""
    batch = reader.read(lo, hi)
    return batch, bad_row_codes(batch.image, batch.spectrum)


def quarantine_codes(reader: SurveySource, lo: int, hi: int, batch_size: int) -> np.ndarray:
    """(hi - lo,) uint8 quarantine codes of survey rows [lo, hi), read ``batch_size`` rows at a time (no encoder
    runs): a damaged quarantine chunk is rebuilt from these."""
    return np.concatenate([read_rows(reader, a, min(a + batch_size, hi))[1] for a in range(lo, hi, batch_size)])


class RowRanges(torch.utils.data.Dataset):
    """Batches of survey rows for a DataLoader; each worker process opens its own HDF5 handles."""

    def __init__(self, reader: SurveySource, ranges: list[tuple[int, int, int]]):
        self.reader, self.ranges = reader, ranges

    def __len__(self) -> int:
        return len(self.ranges)

    def __getitem__(self, i: int) -> dict:
        shard, lo, hi = self.ranges[i]
        b, codes = read_rows(self.reader, lo, hi)
        if codes.any():  # neutral inputs for bad rows; their features are set to NaN and the rows quarantined
            if b.image is not None:
                b.image[codes != 0] = 0.0
            if b.spectrum is not None:
                b.spectrum[codes != 0] = np.linspace(-1.0, 1.0, b.spectrum.shape[1], dtype=np.float32)
        tensor = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))
        return {
            "shard": shard,
            "start": lo,
            "codes": codes,
            "image": tensor(b.image),
            "spectrum": tensor(b.spectrum),
            "spectrum_ivar": tensor(b.spectrum_ivar),
            "targetid": b.targetid,
        }
