"""Tiny seeded fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_mock(tmp_path_factory) -> Path:
    """A 64-pair mock survey (survey.h5 + provabgs.h5), seed 3."""
    from galclip.config import MockConfig
    from galclip.data.mock.survey import generate_mock

    out = tmp_path_factory.mktemp("mock64")
    generate_mock(MockConfig(pairs=64, seed=3, batch_size=32, n_groups=4), out)
    return out


@pytest.fixture(scope="session")
def tiny_store(tiny_mock, tmp_path_factory) -> Path:
    """Features of the tiny mock survey, extracted with seeded random encoders."""
    from galclip.config import ExtractConfig
    from galclip.extract.run import run_extraction

    store = tmp_path_factory.mktemp("store") / "features.zarr"
    run_extraction(tiny_mock, store, ExtractConfig(batch_size=32), progress=False)
    return store


@pytest.fixture(scope="session")
def tiny_heads(tiny_store, tmp_path_factory) -> Path:
    """Heads trained for 2 epochs on the tiny store (read-only: copy them to change them)."""
    from galclip.config import HeadConfig
    from galclip.heads.train import train_heads

    out = tmp_path_factory.mktemp("heads")
    train_heads(tiny_store, out, HeadConfig(epochs=2, batch_size=16), progress=False)
    return out


# the reference extraction of the tiny mock: 4 shards of 16 rows, one augmented image view
SHARDED_EXTRACT_ARGS = ["--rows-per-shard", "16", "--variants", "1", "--batch-size", "8", "--no-progress"]


@pytest.fixture(scope="session")
def sharded_store(tiny_mock, tmp_path_factory) -> Path:
    """The tiny mock extracted in 4 shards with one augmented view, uninterrupted: the reference."""
    from galclip.config import ExtractConfig
    from galclip.extract.run import run_extraction

    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    run_extraction(tiny_mock, store, ExtractConfig(rows_per_shard=16, variants=1, batch_size=8), progress=False)
    return store
