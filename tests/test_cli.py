"""The command line, end to end on a tiny mock survey, and the bad-input corpus.

The corpus: every broken input a user can hand galclip, generated here, run through the CLI. Each case
builds its broken file(s) from the tiny mock, runs one command as a user would, and checks the three
promises: a non-zero exit, a message naming the file, the row (targetid) where there is one, and the
fix; and nothing that was already written (store, heads checkpoint, index) changed or left
half-written. ``pytest -s tests/test_cli.py -k bad_input`` prints every message."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from galclip.cli import main


def test_help_is_instant_and_lazy():
    code = "import sys, galclip.cli; print(any(m in sys.modules for m in ('torch', 'faiss', 'umap', 'zarr')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_cli_end_to_end(tmp_path):
    runner = CliRunner()
    data, store, heads, report = tmp_path / "data", tmp_path / "f.zarr", tmp_path / "heads", tmp_path / "report"
    r = runner.invoke(main, ["-q", "mock", "--pairs", "64", "--out", str(data), "--seed", "7"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["-q", "extract", str(data), str(store), "--batch-size", "32", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "extracted 64 pairs" in r.output
    r = runner.invoke(main, ["-q", "extract", str(data), str(store), "--no-progress"])
    assert r.exit_code == 0 and "already complete" in r.output
    r = runner.invoke(main, ["info", str(store)])
    assert r.exit_code == 0 and "1/1 complete" in r.output and "random" in r.output
    r = runner.invoke(main, ["-q", "heads", str(store), str(heads), "--epochs", "3", "--batch-size", "16", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert (heads / "heads.pt").exists() and (heads / "loss_curve.png").exists()
    r = runner.invoke(main, ["-q", "evaluate", str(store), str(heads), str(report), "--no-umap", "--k", "3"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["n_pairs"] == 64
    for d in ("im2sp", "sp2im"):
        assert set(metrics["retrieval"][d]) >= {"recall@1", "recall@5", "recall@10", "median_rank"}
    assert set(metrics["zero_shot_r2"]) >= {"image", "spectrum", "cross", "raw_image", "raw_spectrum"}
    assert set(metrics["supervised_r2"]) == {"raw_image", "raw_spectrum"} and "zero_shot_r2_k64" in metrics
    assert metrics["timings_s"]["evaluate"] > 0
    html = (report / "report.html").read_text()
    assert "data:image/png;base64" in html and "src=\"http" not in html


def test_cli_user_errors_exit_nonzero(tmp_path):
    runner = CliRunner()
    (tmp_path / "junk.h5").write_bytes(b"junk")
    r = runner.invoke(main, ["extract", str(tmp_path / "junk.h5"), str(tmp_path / "s.zarr"), "--no-progress"])
    assert r.exit_code == 1 and "junk.h5" in r.output and "HDF5" in r.output
    assert not (tmp_path / "s.zarr").exists()
    r = runner.invoke(main, ["info", str(tmp_path)])
    assert r.exit_code == 1 and "galclip extract" in r.output


EXTRACT = ["--batch-size", "32", "--rows-per-shard", "16", "--no-progress"]


def snapshot(*paths: Path) -> dict[str, str]:
    """SHA-256 of every file under ``paths`` (missing paths are recorded as such)."""
    out = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
        out[str(root)] = "missing" if not root.exists() else ""
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders a crashed writer would leave."""
    return [str(p) for p in folder.rglob("*") if ".tmp" in p.name or ".old-" in p.name]


def survey_copy(tiny_mock: Path, dst: Path, edit: Callable[[h5py.Group], None] | None = None) -> Path:
    """survey.h5 of the tiny mock copied to ``dst``, group "0" edited in place."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_mock / "survey.h5", dst / "survey.h5")
    if edit is not None:
        with h5py.File(dst / "survey.h5", "r+") as f:
            edit(f["0"])
    return dst / "survey.h5"


def replace(group: h5py.Group, name: str, value: np.ndarray) -> None:
    del group[name]
    group[name] = value


def catalogue_copy(tiny_mock: Path, dst: Path, edit: Callable[[dict], dict]) -> Path:
    with h5py.File(tiny_mock / "provabgs.h5", "r") as f:
        columns = {k: f[k][:] for k in f.keys()}
    columns = edit(columns)
    dst.mkdir(parents=True, exist_ok=True)
    with h5py.File(dst / "provabgs.h5", "w") as f:
        for k, v in columns.items():
            f[k] = v
    return dst / "provabgs.h5"


@dataclass
class Case:
    """One bad input: ``build(ctx)`` writes it and returns the CLI arguments; ``expect`` are substrings
    of the message (``{tid}`` is filled with the broken row's targetid)."""

    name: str
    build: Callable[["Ctx"], list[str]]
    expect: tuple[str, ...]


@dataclass
class Ctx:
    mock: Path
    store: Path
    other_store: Path
    heads: Path
    index: Path
    tmp: Path
    tid: int = 0

    def bad_row(self, group: h5py.Group, row: int) -> None:
        self.tid = int(group["targetid"][row])


# ---- survey files ---------------------------------------------------------------------------
def truncated(c: Ctx) -> list[str]:
    path = survey_copy(c.mock, c.tmp / "data")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])
    return ["extract", str(path), str(c.tmp / "s.zarr"), *EXTRACT]


def garbage(c: Ctx) -> list[str]:
    (c.tmp / "data").mkdir()
    (c.tmp / "data" / "survey.h5").write_bytes(np.random.default_rng(0).bytes(4096))
    return ["extract", str(c.tmp / "data" / "survey.h5"), str(c.tmp / "s.zarr"), *EXTRACT]


def bands_first(c: Ctx) -> list[str]:
    path = survey_copy(c.mock, c.tmp / "data", lambda g: replace(g, "image", np.moveaxis(g["image"][:], -1, 1)))
    return ["extract", str(path), str(c.tmp / "s.zarr"), *EXTRACT]


def short_spectra(c: Ctx) -> list[str]:
    path = survey_copy(c.mock, c.tmp / "data", lambda g: replace(g, "spectrum", g["spectrum"][:, ::2]))
    return ["extract", str(path), str(c.tmp / "s.zarr"), *EXTRACT]


def _edit_row(c: Ctx, array: str, row: int, fn: Callable[[np.ndarray], None]):
    def edit(g: h5py.Group) -> None:
        c.bad_row(g, row)
        value = g[array][row]
        fn(value)
        g[array][row] = value
    return edit


def nan_pixels(c: Ctx) -> list[str]:
    path = survey_copy(c.mock, c.tmp / "data", _edit_row(c, "image", 3, lambda v: v.__setitem__((40, 40, 0), np.nan)))
    return ["extract", str(path), str(c.tmp / "s.zarr"), *EXTRACT]


def inf_flux(c: Ctx) -> list[str]:
    path = survey_copy(c.mock, c.tmp / "data", _edit_row(c, "spectrum", 7, lambda v: v.__setitem__((500, 0), np.inf)))
    return ["extract", str(path), str(c.tmp / "s.zarr"), *EXTRACT]


def zero_spectrum(c: Ctx) -> list[str]:
    path = survey_copy(c.mock, c.tmp / "data", _edit_row(c, "spectrum", 1, lambda v: v.__setitem__(..., 0.0)))
    return ["extract", str(path), str(c.tmp / "s.zarr"), *EXTRACT]


def blank_image(c: Ctx) -> list[str]:
    path = survey_copy(c.mock, c.tmp / "data", _edit_row(c, "image", 2, lambda v: v.__setitem__(..., 0.0)))
    return ["extract", str(path), str(c.tmp / "s.zarr"), *EXTRACT]


def duplicate_ids(c: Ctx) -> list[str]:
    def edit(g: h5py.Group) -> None:
        ids = g["targetid"][:]
        ids[4] = ids[2]
        c.tid = int(ids[2])
        g["targetid"][:] = ids
    path = survey_copy(c.mock, c.tmp / "data", edit)
    return ["extract", str(path), str(c.tmp / "s.zarr"), *EXTRACT]


def empty_survey(c: Ctx) -> list[str]:
    (c.tmp / "data").mkdir()
    with h5py.File(c.tmp / "data" / "survey.h5", "w") as f:
        g = f.create_group("0")
        g["image"] = np.zeros((0, 152, 152, 3), np.float32)
        g["spectrum"] = np.zeros((0, 7781, 1), np.float32)
        g["redshift"] = np.zeros(0, np.float32)
        g["targetid"] = np.zeros(0, np.int64)
    return ["extract", str(c.tmp / "data" / "survey.h5"), str(c.tmp / "s.zarr"), *EXTRACT]


# ---- catalogues -----------------------------------------------------------------------------
def _extract_with_catalogue(c: Ctx, edit: Callable[[dict], dict]) -> list[str]:
    cat = catalogue_copy(c.mock, c.tmp / "cat", edit)
    return ["extract", str(c.mock / "survey.h5"), str(c.tmp / "s.zarr"), "--catalogue", str(cat), *EXTRACT]


def catalogue_missing_column(c: Ctx) -> list[str]:
    return _extract_with_catalogue(c, lambda cols: {k: v for k, v in cols.items() if k != "MAG_Z"})


def catalogue_missing_rows(c: Ctx) -> list[str]:
    # a catalogue of other galaxies: none of the survey's targetids is in it
    return _extract_with_catalogue(c, lambda cols: {**cols, "TARGETID": cols["TARGETID"] + 10**15})


def catalogue_empty_after_cuts(c: Ctx) -> list[str]:
    return _extract_with_catalogue(c, lambda cols: {**cols, "PROVABGS_LOGMSTAR_BF": np.full_like(cols["PROVABGS_LOGMSTAR_BF"], -999.0)})


def catalogue_duplicate_ids(c: Ctx) -> list[str]:
    def edit(cols: dict) -> dict:
        ids = cols["TARGETID"].copy()
        ids[1] = ids[0]
        c.tid = int(ids[0])
        return {**cols, "TARGETID": ids}
    return _extract_with_catalogue(c, edit)


# ---- checkpoints ----------------------------------------------------------------------------
def stein_missing_keys(c: Ctx) -> list[str]:
    from galclip.extract.image_encoder import moco_resnet50

    state = {f"encoder_q.{k}": v for k, v in moco_resnet50().state_dict().items() if not k.startswith("layer4.2")}
    torch.save({"state_dict": state}, c.tmp / "stein.ckpt")
    return ["extract", str(c.mock / "survey.h5"), str(c.tmp / "s.zarr"), "--image-weights", str(c.tmp / "stein.ckpt"), *EXTRACT]


def spender_unexpected_keys(c: Ctx) -> list[str]:
    from galclip.extract.spectrum_encoder import SpenderSpectrumEncoder

    state = {f"encoder.{k}": v for k, v in SpenderSpectrumEncoder().state_dict().items()}
    state["encoder.extra_layer.weight"] = torch.zeros(3)
    torch.save({"model": state}, c.tmp / "spender.pt")
    return ["extract", str(c.mock / "survey.h5"), str(c.tmp / "s.zarr"), "--spectrum-weights", str(c.tmp / "spender.pt"), *EXTRACT]


def heads_from_other_store(c: Ctx) -> list[str]:
    return ["evaluate", str(c.other_store), str(c.heads), str(c.tmp / "report"), "--no-umap"]


def corrupt_heads(c: Ctx) -> list[str]:
    shutil.copytree(c.heads, c.tmp / "heads")
    raw = (c.tmp / "heads" / "heads.pt").read_bytes()
    (c.tmp / "heads" / "heads.pt").write_bytes(raw[: len(raw) // 2])
    return ["evaluate", str(c.store), str(c.tmp / "heads"), str(c.tmp / "report"), "--no-umap"]


def resume_corrupt_state(c: Ctx) -> list[str]:
    shutil.copytree(c.heads, c.tmp / "heads")
    (c.tmp / "heads" / "train_state.pt").write_bytes(b"\x80\x04 truncated")
    return ["heads", str(c.store), str(c.tmp / "heads"), "--resume", "--epochs", "2", "--batch-size", "16", "--no-progress"]


def index_from_other_heads(c: Ctx) -> list[str]:
    shutil.copytree(c.heads, c.tmp / "heads")
    shutil.copytree(c.index, c.tmp / "index")  # beside the heads, as the index finds them (relative path)
    from galclip.heads.checkpoint import save_heads

    ckpt = torch.load(c.tmp / "heads" / "heads.pt", weights_only=True)
    ckpt.pop("content_sha256")
    ckpt["best_epoch"] += 1  # the heads were retrained after the index was built
    save_heads(ckpt, c.tmp / "heads" / "heads.pt")
    with h5py.File(c.mock / "survey.h5", "r") as f:
        c.tid = int(f["0"]["targetid"][0])
    return ["search", str(c.tmp / "index"), "--data", str(c.mock / "survey.h5"), "--targetid", str(c.tid)]


def unknown_targetid(c: Ctx) -> list[str]:
    c.tid = 42
    return ["search", str(c.index), "--targetid", "42"]


# ---- stores ---------------------------------------------------------------------------------
def store_missing_array(c: Ctx) -> list[str]:
    shutil.copytree(c.store, c.tmp / "s.zarr")
    shutil.rmtree(c.tmp / "s.zarr" / "spectrum_features")
    return ["check", str(c.tmp / "s.zarr")]


def store_not_a_store(c: Ctx) -> list[str]:
    (c.tmp / "s.zarr").mkdir()
    (c.tmp / "s.zarr" / "notes.txt").write_text("hello")
    return ["heads", str(c.tmp / "s.zarr"), str(c.tmp / "heads"), "--epochs", "1", "--no-progress"]


def index_into_foreign_folder(c: Ctx) -> list[str]:
    (c.tmp / "mine").mkdir()
    (c.tmp / "mine" / "thesis.tex").write_text("do not delete")
    return ["index", str(c.store), str(c.heads), str(c.tmp / "mine"), "--no-progress"]


CASES = [
    Case("truncated HDF5 survey", truncated, ("survey.h5", "not a readable HDF5 file", "re-download or regenerate")),
    Case("corrupt HDF5 survey (random bytes)", garbage, ("survey.h5", "not a readable HDF5 file", "re-download or regenerate")),
    Case("images bands-first (3,152,152)", bands_first, ("survey.h5:0", "(3, 152, 152)", "transpose")),
    Case("spectra on another grid (3891 bins)", short_spectra, ("survey.h5:0", "(3891, 1)", "7781", "resample")),
    Case("NaN pixel", nan_pixels, ("survey.h5:0", "targetid {tid}: image has NaN/inf pixels", "--bad-rows skip")),
    Case("inf flux", inf_flux, ("survey.h5:0", "targetid {tid}: spectrum has NaN/inf values", "--bad-rows skip")),
    Case("all-zero spectrum", zero_spectrum, ("survey.h5:0", "targetid {tid}: spectrum is constant", "--bad-rows skip")),
    Case("blank image", blank_image, ("survey.h5:0", "targetid {tid}: image", "--bad-rows skip")),
    Case("duplicate targetids", duplicate_ids, ("survey.h5:0", "duplicate targetid", "[{tid}]", "drop the repeated rows")),
    Case("empty survey", empty_survey, ("survey.h5", "no galaxies",)),
    Case("catalogue missing a column", catalogue_missing_column, ("provabgs.h5", "lacks column(s) ['MAG_Z']",)),
    Case("catalogue missing the survey's rows", catalogue_missing_rows, ("provabgs.h5", "none of the", "targetid")),
    Case("catalogue empty after the cuts", catalogue_empty_after_cuts, ("provabgs.h5", "no catalogue row passes the cuts",)),
    Case("catalogue duplicate TARGETIDs", catalogue_duplicate_ids, ("provabgs.h5", "more than once", "[{tid}]", "one row per TARGETID")),
    Case("Stein checkpoint missing keys", stein_missing_keys, ("stein.ckpt", "missing", "layer4.2")),
    Case("Spender checkpoint unexpected keys", spender_unexpected_keys, ("spender.pt", "unexpected", "extra_layer")),
    Case("heads from another store", heads_from_other_store, ("heads.pt", "fingerprint", "train heads on this store")),
    Case("truncated heads.pt", corrupt_heads, ("heads.pt", "cannot read the checkpoint", "galclip heads")),
    Case("truncated train_state.pt on --resume", resume_corrupt_state,
         ("train_state.pt", "cannot read the checkpoint", "start without --resume")),
    Case("index built from other heads", index_from_other_heads, ("was built from other heads", "rebuild the index")),
    Case("search for a targetid not indexed", unknown_targetid, ("targetid {tid} is not in the index", "--data FILE")),
    Case("store missing an array", store_missing_array, ("s.zarr", "spectrum_features", "missing")),
    Case("a folder that is not a store", store_not_a_store, ("s.zarr", "no feature store here", "galclip extract")),
    Case("index into a folder that is not an index", index_into_foreign_folder, ("mine", "not a galclip index")),
]


@pytest.fixture(scope="module")
def corpus_inputs(tiny_mock, tiny_store, sharded_store, tmp_path_factory):
    from galclip.config import HeadConfig
    from galclip.index.build import build_indexes
    from galclip.heads.train import train_heads

    out = tmp_path_factory.mktemp("corpus")
    train_heads(tiny_store, out / "heads", HeadConfig(epochs=2, batch_size=16), progress=False)
    build_indexes(tiny_store, out / "heads", out / "index")
    return tiny_mock, tiny_store, sharded_store, out / "heads", out / "index"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_explained_and_harmless(case: Case, corpus_inputs, tmp_path):
    mock, store, other, heads, index = corpus_inputs
    ctx = Ctx(mock, store, other, heads, index, tmp_path)
    args = case.build(ctx)
    shared = snapshot(store, heads, index, mock)
    own = snapshot(tmp_path)  # the case's own inputs: broken copies of stores, heads, indexes, the user's files
    result = CliRunner().invoke(main, args)
    message = result.output
    print(f"\n[{case.name}] galclip {' '.join(Path(a).name if '/' in a else a for a in args)}\n{message}")
    assert result.exit_code != 0, message
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    for piece in case.expect:
        assert piece.format(tid=ctx.tid) in message, f"{piece!r} not in: {message}"
    assert "Traceback" not in message
    assert snapshot(store, heads, index, mock) == shared  # nothing already written changed ...
    after = snapshot(tmp_path)
    assert {k: after.get(k) for k in own} == own  # ... not even the broken inputs themselves
    assert not leftovers(tmp_path), leftovers(tmp_path)
    if (tmp_path / "s.zarr").exists() and args[0] == "extract":
        from galclip.store import FeatureStore

        s = FeatureStore.open(tmp_path / "s.zarr")
        done = np.repeat(s.complete_mask(), s.rows_per_shard)[: s.n]
        assert np.isfinite(s.group["image_features"][:][done]).all()  # complete shards hold whole, finite rows
