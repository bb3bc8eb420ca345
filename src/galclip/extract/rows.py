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
            if b.image is not None:
                b.image[codes != 0] = 0.0
            if b.spectrum is not None:
                b.spectrum[codes != 0] = np.linspace(-1.0, 1.0, b.spectrum.shape[1], dtype=np.float32)
        tensor = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        return {"shard": shard, "start": lo, "codes": codes, "image": tensor(b.image), "spectrum": tensor(b.spectrum),
                "targetid": b.targetid}
