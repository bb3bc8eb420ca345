"""The row reader of an extraction: batches of survey rows for a DataLoader, bad rows neutralised."""

from __future__ import annotations

import numpy as np
import torch

from galclip.data.survey import SurveyReader
from galclip.extract.validate import bad_row_codes


class RowRanges(torch.utils.data.Dataset):
    """Batches of survey rows for a DataLoader; each worker process opens its own HDF5 handles."""

    def __init__(self, reader: SurveyReader, ranges: list[tuple[int, int, int]]):
        self.reader, self.ranges = reader, ranges

    def __len__(self) -> int:
        return len(self.ranges)

    def __getitem__(self, i: int) -> dict:
        shard, lo, hi = self.ranges[i]
        b = self.reader.read(lo, hi)
        codes = bad_row_codes(b.image, b.spectrum)
        if codes.any():  # neutral inputs for bad rows; their features are set to NaN and the rows quarantined
            b.image[codes != 0] = 0.0
            b.spectrum[codes != 0] = np.linspace(-1.0, 1.0, b.spectrum.shape[1], dtype=np.float32)
        return {"shard": shard, "start": lo, "codes": codes, "image": torch.from_numpy(np.ascontiguousarray(b.image)),
                "spectrum": torch.from_numpy(np.ascontiguousarray(b.spectrum)), "targetid": b.targetid}
