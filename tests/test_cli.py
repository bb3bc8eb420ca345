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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
    r = runner.invoke(
        main, ["-q", "heads", str(store), str(heads), "--epochs", "3", "--batch-size", "16", "--no-progress"]
    )
    assert r.exit_code == 0, r.output
    assert (heads / "heads.pt").exists() and (heads / "loss_curve.png").exists()
    r = runner.invoke(main, ["-q", "evaluate", str(store), str(heads), str(report), "--no-umap"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["n_pairs"] == 64
    for d in ("im2sp", "sp2im"):
        assert set(metrics["retrieval"][d]) >= {"recall@1", "recall@5", "recall@10", "median_rank"}
    assert set(metrics["zero_shot_r2"]) >= {"image", "spectrum", "cross", "raw_image", "raw_spectrum"}
    assert set(metrics["supervised_r2"]) == {"raw_image", "raw_spectrum"} and "zero_shot_r2_k64" in metrics
    assert metrics["timings_s"]["evaluate"] > 0
    html = (report / "report.html").read_text()
    assert "data:image/png;base64" in html and 'src="http' not in html


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
    build: Callable[[Ctx], list[str]]
    expect: tuple[str, ...]
    writes_nothing: bool = False  # refused before any work: no new file, folder or lock anywhere


@dataclass
class Ctx:
    mock: Path
    store: Path
    other_store: Path
    heads: Path
    index: Path
    tmp: Path
    tid: int = 0
    held: list = None  # things the case keeps alive while the command runs (a socket holding a port)

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
    return _extract_with_catalogue(
        c, lambda cols: {**cols, "PROVABGS_LOGMSTAR_BF": np.full_like(cols["PROVABGS_LOGMSTAR_BF"], -999.0)}
    )


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
    return [
        "extract",
        str(c.mock / "survey.h5"),
        str(c.tmp / "s.zarr"),
        "--image-weights",
        str(c.tmp / "stein.ckpt"),
        *EXTRACT,
    ]


def spender_unexpected_keys(c: Ctx) -> list[str]:
    from galclip.extract.spectrum_encoder import SpenderSpectrumEncoder

    state = {f"encoder.{k}": v for k, v in SpenderSpectrumEncoder().state_dict().items()}
    state["encoder.extra_layer.weight"] = torch.zeros(3)
    torch.save({"model": state}, c.tmp / "spender.pt")
    return [
        "extract",
        str(c.mock / "survey.h5"),
        str(c.tmp / "s.zarr"),
        "--spectrum-weights",
        str(c.tmp / "spender.pt"),
        *EXTRACT,
    ]


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
    return [
        "heads",
        str(c.store),
        str(c.tmp / "heads"),
        "--resume",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--no-progress",
    ]


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


# ---- mistakes a user makes with correct files (issue 19): wrong order, wrong kind, an output that holds their work


def demo_over_user_work(c: Ctx) -> list[str]:
    (c.tmp / "work" / "data").mkdir(parents=True)
    (c.tmp / "work" / "data" / "my_real_survey.txt").write_text("months of work")
    return ["demo", "--pairs", "64", "--out", str(c.tmp / "work")]


def demo_over_earlier_demo_with_user_file(c: Ctx) -> list[str]:
    from galclip.outputs import write_marker

    (c.tmp / "d" / "heads").mkdir(parents=True)
    write_marker(c.tmp / "d", "demo")
    (c.tmp / "d" / "heads" / "notes.txt").write_text("mine")
    return ["demo", "--pairs", "64", "--out", str(c.tmp / "d")]


def mock_over_survey(c: Ctx) -> list[str]:
    survey_copy(c.mock, c.tmp / "data")
    return ["mock", "--pairs", "64", "--out", str(c.tmp / "data")]


def heads_over_heads(c: Ctx) -> list[str]:
    shutil.copytree(c.heads, c.tmp / "h")
    return ["heads", str(c.store), str(c.tmp / "h"), "--epochs", "1", "--no-progress"]


def heads_into_foreign_folder(c: Ctx) -> list[str]:
    (c.tmp / "h").mkdir()
    (c.tmp / "h" / "paper.tex").write_text("draft")
    return ["heads", str(c.store), str(c.tmp / "h"), "--epochs", "1", "--no-progress"]


def sweep_into_heads_folder(c: Ctx) -> list[str]:
    shutil.copytree(c.heads, c.tmp / "h")
    return ["sweep", str(c.store), str(c.tmp / "h"), "--grid", "lr=1e-3", "--epochs", "1", "--no-progress"]


def evaluate_into_foreign_folder(c: Ctx) -> list[str]:
    (c.tmp / "r").mkdir()
    (c.tmp / "r" / "figure1.png").write_bytes(b"my figure")
    (c.tmp / "r" / "notes.md").write_text("mine")
    return ["evaluate", str(c.store), str(c.heads), str(c.tmp / "r"), "--no-umap"]


def predict_over_user_file(c: Ctx) -> list[str]:
    (c.tmp / "cat.fits").write_bytes(b"SIMPLE  = T" + b" " * 2869)
    return ["predict", str(c.index), str(c.mock), str(c.tmp / "cat.fits")]


def predict_report_into_foreign_folder(c: Ctx) -> list[str]:
    (c.tmp / "rep").mkdir()
    (c.tmp / "rep" / "notes.md").write_text("mine")
    return ["predict", str(c.index), str(c.mock), str(c.tmp / "cat.fits"), "--report", str(c.tmp / "rep")]


def extract_on_cuda_without_gpu(c: Ctx) -> list[str]:
    return ["extract", str(c.mock), str(c.tmp / "s.zarr"), "--device", "cuda", "--no-progress"]


def heads_on_tpu(c: Ctx) -> list[str]:
    return ["heads", str(c.store), str(c.tmp / "h"), "--device", "tpu", "--no-progress"]


def extract_arguments_swapped(c: Ctx) -> list[str]:
    return ["extract", str(c.store), str(c.mock), "--no-progress"]


def heads_arguments_swapped(c: Ctx) -> list[str]:
    return ["heads", str(c.heads), str(c.store)]


def heads_from_survey_folder(c: Ctx) -> list[str]:
    return ["heads", str(c.mock), str(c.tmp / "h2")]


def search_a_store(c: Ctx) -> list[str]:
    return ["search", str(c.store), "--targetid", "1"]


def predict_arguments_swapped(c: Ctx) -> list[str]:
    return ["predict", str(c.mock), str(c.index), str(c.tmp / "x.fits")]


def resume_with_other_rows_per_shard(c: Ctx) -> list[str]:
    return ["extract", str(c.mock), str(c.other_store), "--rows-per-shard", "64", "--variants", "1", "--no-progress"]


def check_a_survey_file(c: Ctx) -> list[str]:
    return ["check", str(c.mock / "survey.h5")]


def check_an_index_file(c: Ctx) -> list[str]:
    return ["check", str(c.index / "image.npy")]


def check_index_json(c: Ctx) -> list[str]:
    return ["check", str(c.index / "index.json")]


def grid_name_twice(c: Ctx) -> list[str]:
    return ["sweep", str(c.store), str(c.tmp / "sw"), "--grid", "lr=1e-4", "--grid", "lr=3e-4"]


def search_more_than_indexed(c: Ctx) -> list[str]:
    from galclip.store import FeatureStore

    c.tid = int(FeatureStore.open(c.store).targetids()[0])
    return ["search", str(c.index), "--targetid", str(c.tid), "-k", "1000"]


def evaluate_k_beyond_the_test_split(c: Ctx) -> list[str]:
    return ["evaluate", str(c.store), str(c.heads), str(c.tmp / "r"), "-k", "1000", "--no-umap"]


def predict_work_onto_other_store(c: Ctx) -> list[str]:
    new = survey_copy(c.mock, c.tmp / "new", lambda g: replace(g, "targetid", g["targetid"][:] + 10**15)).parent
    return ["predict", str(c.index), str(new), str(c.tmp / "x.fits"), "-k", "3", "--work", str(c.other_store)]


def serve_on_a_taken_port(c: Ctx) -> list[str]:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    c.held = [taken]
    return ["serve", str(c.index), "--port", str(taken.getsockname()[1])]


MISTAKES = [
    Case(
        "serve on a taken port", serve_on_a_taken_port, ("--port", "is already in use", "--port 0"), writes_nothing=True
    ),
    Case(
        "demo over a folder holding the user's data",
        demo_over_user_work,
        ("work", "data/, which 'galclip demo' did not write", "--overwrite"),
        writes_nothing=True,
    ),
    Case(
        "demo --overwrite over a folder holding the user's data",
        lambda c: [*demo_over_user_work(c), "--overwrite"],
        ("my_real_survey.txt", "never deletes what galclip did not write"),
        writes_nothing=True,
    ),
    Case(
        "demo over an earlier demo holding a user's file",
        demo_over_earlier_demo_with_user_file,
        ("notes.txt", "never deletes what galclip did not write"),
        writes_nothing=True,
    ),
    Case(
        "mock over an existing survey",
        mock_over_survey,
        ("survey.h5", "already exists", "--overwrite"),
        writes_nothing=True,
    ),
    Case(
        "heads over trained heads",
        heads_over_heads,
        ("heads.pt", "already holds trained heads", "--resume", "--overwrite"),
        writes_nothing=True,
    ),
    Case(
        "heads into a folder galclip did not make",
        heads_into_foreign_folder,
        ("paper.tex", "which 'galclip heads' did not write", "--overwrite"),
        writes_nothing=True,
    ),
    Case(
        "sweep into a heads folder",
        sweep_into_heads_folder,
        ("is trained heads", "OUT of 'galclip sweep STORE OUT'"),
        writes_nothing=True,
    ),
    Case(
        "evaluate into a folder galclip did not make",
        evaluate_into_foreign_folder,
        ("figure1.png", "notes.md", "--overwrite"),
        writes_nothing=True,
    ),
    Case(
        "predict over a file that is not a catalogue",
        predict_over_user_file,
        ("cat.fits", "not a galclip catalogue", "--overwrite"),
        writes_nothing=True,
    ),
    Case(
        "predict's report into a folder galclip did not make",
        predict_report_into_foreign_folder,
        ("rep", "notes.md", "--report"),
        writes_nothing=True,
    ),
    Case(
        "extract --device cuda without a GPU",
        extract_on_cuda_without_gpu,
        ("--device cuda", "no CUDA GPU", "--device cpu"),
        writes_nothing=True,
    ),
    Case("heads --device tpu", heads_on_tpu, ("--device tpu", "auto, cpu, cuda or cuda:N"), writes_nothing=True),
    Case(
        "extract STORE DATA",
        extract_arguments_swapped,
        ("is a galclip feature store", "DATA of 'galclip extract DATA... STORE'", "look swapped", "galclip extract "),
        writes_nothing=True,
    ),
    Case(
        "heads HEADS STORE",
        heads_arguments_swapped,
        ("is trained heads", "STORE of 'galclip heads STORE OUT' must be a galclip feature store", "look swapped"),
        writes_nothing=True,
    ),
    Case(
        "evaluate from an index",
        lambda c: ["evaluate", str(c.index), str(c.heads), str(c.tmp / "r")],
        ("is a galclip index folder", "the store this index was built from is"),
        writes_nothing=True,
    ),
    Case(
        "heads from a survey folder",
        heads_from_survey_folder,
        ("survey data", "extract its features first: galclip extract"),
        writes_nothing=True,
    ),
    Case(
        "search a store",
        search_a_store,
        ("is a galclip feature store", "must be a galclip index folder", "galclip index"),
        writes_nothing=True,
    ),
    Case(
        "predict SURVEY INDEX OUT", predict_arguments_swapped, ("look swapped", "galclip predict "), writes_nothing=True
    ),
    Case(
        "predict --work onto a store of other input",
        predict_work_onto_other_store,
        ("was made with different settings", "work store of a 'galclip predict' run", "--work NEW.zarr"),
        writes_nothing=True,
    ),
    Case(
        "resume with another --rows-per-shard",
        resume_with_other_rows_per_shard,
        ("rows_per_shard: store has 16, this run has 64", "run exactly", "--rows-per-shard 16", "--variants 1"),
        writes_nothing=True,
    ),
    Case(
        "check a survey file",
        check_a_survey_file,
        ("survey.h5", "is survey data", "'galclip check' verifies"),
        writes_nothing=True,
    ),
    Case(
        "check a file inside an index",
        check_an_index_file,
        ("image.npy", "one file of a galclip index folder", "galclip check "),
        writes_nothing=True,
    ),
    Case(
        "check an index's index.json",
        check_index_json,
        ("index.json", "one file of a galclip index folder"),
        writes_nothing=True,
    ),
    Case(
        "--grid lr twice", grid_name_twice, ("--grid lr is given 2 times", "--grid lr=1e-4,3e-4"), writes_nothing=True
    ),
    Case(
        "search -k beyond the index",
        search_more_than_indexed,
        ("k 1000", "the index holds 64 galaxies"),
        writes_nothing=True,
    ),
    Case(
        "evaluate -k beyond the test split",
        evaluate_k_beyond_the_test_split,
        ("-k 1000", "labelled pair(s)", "or use -k"),
        writes_nothing=True,
    ),
]


CASES = [
    Case("truncated HDF5 survey", truncated, ("survey.h5", "not a readable HDF5 file", "re-download or regenerate")),
    Case(
        "corrupt HDF5 survey (random bytes)",
        garbage,
        ("survey.h5", "not a readable HDF5 file", "re-download or regenerate"),
    ),
    Case("images bands-first (3,152,152)", bands_first, ("survey.h5:0", "(3, 152, 152)", "transpose")),
    Case("spectra on another grid (3891 bins)", short_spectra, ("survey.h5:0", "(3891, 1)", "7781", "resample")),
    Case("NaN pixel", nan_pixels, ("survey.h5:0", "targetid {tid}: image has NaN/inf pixels", "--bad-rows skip")),
    Case("inf flux", inf_flux, ("survey.h5:0", "targetid {tid}: spectrum has NaN/inf values", "--bad-rows skip")),
    Case(
        "all-zero spectrum", zero_spectrum, ("survey.h5:0", "targetid {tid}: spectrum is constant", "--bad-rows skip")
    ),
    Case("blank image", blank_image, ("survey.h5:0", "targetid {tid}: image", "--bad-rows skip")),
    Case(
        "duplicate targetids", duplicate_ids, ("survey.h5:0", "duplicate targetid", "[{tid}]", "drop the repeated rows")
    ),
    Case(
        "empty survey",
        empty_survey,
        (
            "survey.h5",
            "no galaxies",
        ),
    ),
    Case(
        "catalogue missing a column",
        catalogue_missing_column,
        (
            "provabgs.h5",
            "lacks column(s) ['MAG_Z']",
        ),
    ),
    Case("catalogue missing the survey's rows", catalogue_missing_rows, ("provabgs.h5", "none of the", "targetid")),
    Case(
        "catalogue empty after the cuts",
        catalogue_empty_after_cuts,
        (
            "provabgs.h5",
            "no catalogue row passes the cuts",
        ),
    ),
    Case(
        "catalogue duplicate TARGETIDs",
        catalogue_duplicate_ids,
        ("provabgs.h5", "more than once", "[{tid}]", "one row per TARGETID"),
    ),
    Case("Stein checkpoint missing keys", stein_missing_keys, ("stein.ckpt", "missing", "layer4.2")),
    Case("Spender checkpoint unexpected keys", spender_unexpected_keys, ("spender.pt", "unexpected", "extra_layer")),
    Case("heads from another store", heads_from_other_store, ("heads.pt", "fingerprint", "train heads on this store")),
    Case("truncated heads.pt", corrupt_heads, ("heads.pt", "cannot read the checkpoint", "galclip heads")),
    Case(
        "truncated train_state.pt on --resume",
        resume_corrupt_state,
        ("train_state.pt", "cannot read the checkpoint", "start without --resume"),
    ),
    Case("index built from other heads", index_from_other_heads, ("was built from other heads", "rebuild the index")),
    Case("search for a targetid not indexed", unknown_targetid, ("targetid {tid} is not in the index", "--data FILE")),
    Case("store missing an array", store_missing_array, ("s.zarr", "spectrum_features", "missing")),
    Case(
        "a folder that is not a store",
        store_not_a_store,
        ("s.zarr", "is a folder galclip did not write", "must be a galclip feature store", "galclip extract"),
    ),
    Case(
        "index into a folder that is not an index",
        index_into_foreign_folder,
        ("mine", "thesis.tex", "which 'galclip index' did not write", "--overwrite"),
    ),
    *MISTAKES,
]


@pytest.fixture(scope="module")
def corpus_inputs(tiny_mock, tiny_store, sharded_store, tmp_path_factory):
    from galclip.config import HeadConfig
    from galclip.heads.train import train_heads
    from galclip.index.build import build_indexes

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
    listing = sorted(tmp_path.rglob("*"))
    result = CliRunner().invoke(main, args)
    message = result.output
    for thing in ctx.held or ():
        thing.close()
    assert "http://" not in message  # nothing claims to serve
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
    if case.writes_nothing:  # no empty folder, no lock, no partial output: the folder is as the case left it
        assert sorted(tmp_path.rglob("*")) == listing, sorted(set(tmp_path.rglob("*")) - set(listing))
        assert not list(store.parent.glob("*.lock")) and not list(other.parent.glob("*.lock"))
    if (tmp_path / "s.zarr").exists() and args[0] == "extract":
        from galclip.store import FeatureStore

        s = FeatureStore.open(tmp_path / "s.zarr")
        done = np.repeat(s.complete_mask(), s.rows_per_shard)[: s.n]
        assert np.isfinite(s.group["image_features"][:][done]).all()  # complete shards hold whole, finite rows


def test_a_replaced_survey_file_is_refused_by_every_reader(tiny_mock, tmp_path):
    """survey.h5 replaced after extraction by another survey of the same size: search --plot, evaluate, serve,
    the resumed extraction and predict's work store each refuse, naming the file; nothing is drawn or written."""
    from galclip.config import MockConfig
    from galclip.data.mock.survey import generate_mock

    runner = CliRunner()
    data, store, heads, index = tmp_path / "data", tmp_path / "f.zarr", tmp_path / "heads", tmp_path / "index"
    survey_copy(tiny_mock, data)
    shutil.copy(tiny_mock / "provabgs.h5", data / "provabgs.h5")
    for args in (
        ["extract", str(data), str(store), *EXTRACT],
        ["heads", str(store), str(heads), "--epochs", "1", "--batch-size", "16", "--no-progress"],
        ["index", str(store), str(heads), str(index), "--no-map", "--no-progress"],
    ):
        r = runner.invoke(main, ["-q", *args])
        assert r.exit_code == 0, r.output
    new = tmp_path / "new"  # galaxies to predict, extracted once into predict's work store
    generate_mock(MockConfig(pairs=16, seed=21, batch_size=16, n_groups=1, modality="image"), new)
    r = runner.invoke(main, ["-q", "predict", str(index), str(new), str(tmp_path / "cat.fits"), "--no-progress"])
    assert r.exit_code == 0, r.output
    generate_mock(MockConfig(pairs=64, seed=4, batch_size=32, n_groups=4), tmp_path / "other")
    generate_mock(MockConfig(pairs=16, seed=22, batch_size=16, n_groups=1, modality="image"), tmp_path / "other_new")
    assert (tmp_path / "other" / "survey.h5").stat().st_size == (data / "survey.h5").stat().st_size
    shutil.copy(tmp_path / "other" / "survey.h5", data / "survey.h5")  # same size, other galaxies
    shutil.copy(tmp_path / "other_new" / "survey.h5", new / "survey.h5")
    before = snapshot(tmp_path)
    tid = int(np.load(index / "rows.npz")["targetid"][0])
    cases = {
        "search --plot": ["search", str(index), "--targetid", str(tid), "--plot", str(tmp_path / "p.png")],
        "evaluate": ["evaluate", str(store), str(heads), str(tmp_path / "report"), "--no-umap"],
        "serve": ["serve", str(index), "--port", "0"],
        "extract (resume)": ["extract", str(data), str(store), *EXTRACT],
        "predict": ["predict", str(index), str(new), str(tmp_path / "cat.fits"), "--no-progress"],
    }
    for name, args in cases.items():
        r = runner.invoke(main, ["-q", *args])
        print(f"[{name}] {r.output}")
        assert r.exit_code == 1 and "survey.h5: replaced since extraction" in r.output, (name, r.output)
        assert "other targetids" in r.output and "Traceback" not in r.output and "http://" not in r.output
        assert snapshot(tmp_path) == before, name
    generate_mock(MockConfig(pairs=16, seed=4, batch_size=16, n_groups=1), tmp_path / "small")
    shutil.copy(tmp_path / "small" / "survey.h5", data / "survey.h5")  # smaller: was an IndexError
    r = runner.invoke(main, ["-q", "search", str(index), "--targetid", str(tid), "--plot", str(tmp_path / "p.png")])
    assert r.exit_code == 1 and "16 galaxies, 64 at extraction" in r.output, r.output
    shutil.copy(tiny_mock / "survey.h5", data / "survey.h5")  # the original back: everything reads again
    r = runner.invoke(main, ["-q", "search", str(index), "--targetid", str(tid), "--plot", str(tmp_path / "p.png")])
    assert r.exit_code == 0 and (tmp_path / "p.png").exists(), r.output


def test_overwrite_writes_beside_what_galclip_did_not_write(corpus_inputs, tmp_path):
    """--overwrite is the way through a refusal, and even then only galclip's own files are replaced."""
    mock, store, _, heads, _ = corpus_inputs
    runner = CliRunner()
    out = tmp_path / "h"
    shutil.copytree(heads, out)
    (out / "paper.tex").write_text("draft")
    before = (out / "heads.pt").read_bytes()
    args = [
        "-q",
        "heads",
        str(store),
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--seed",
        "5",
        "--image-hidden",
        "64",
        "--no-progress",
    ]
    assert runner.invoke(main, args).exit_code == 1 and (out / "heads.pt").read_bytes() == before
    r = runner.invoke(main, [*args, "--overwrite"])
    assert r.exit_code == 0, r.output
    assert (out / "heads.pt").read_bytes() != before and (out / "paper.tex").read_text() == "draft"
    report = tmp_path / "r"
    report.mkdir()
    (report / "notes.md").write_text("mine")
    r = runner.invoke(main, ["-q", "evaluate", str(store), str(out), str(report), "--no-umap", "--overwrite"])
    assert r.exit_code == 0 and (report / "notes.md").read_text() == "mine" and (report / "report.html").exists()
    r = runner.invoke(main, ["-q", "evaluate", str(store), str(out), str(report), "--no-umap"])  # its own output now
    assert r.exit_code == 0, r.output
    assert (report / "notes.md").read_text() == "mine"
    survey_copy(mock, tmp_path / "m")
    first = (tmp_path / "m" / "survey.h5").read_bytes()
    r = runner.invoke(main, ["-q", "mock", "--pairs", "8", "--seed", "1", "--out", str(tmp_path / "m"), "--overwrite"])
    assert r.exit_code == 0 and (tmp_path / "m" / "survey.h5").read_bytes() != first


def test_info_lists_targetids_and_every_array(tiny_store):
    import csv
    import io

    from galclip.store import FeatureStore

    r = CliRunner().invoke(main, ["info", str(tiny_store), "--targetids"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.output)))
    store = FeatureStore.open(tiny_store)
    assert [int(row["targetid"]) for row in rows] == store.targetids().tolist()
    assert {row["split"] for row in rows} <= {"train", "selection", "test"}
    r = CliRunner().invoke(main, ["info", str(tiny_store)])
    assert "quarantine" in r.output and "pairs" in r.output


def test_a_demo_replaces_only_what_an_earlier_demo_wrote(tmp_path):
    """An earlier demo's folder (marked, or unmarked as galclip 0.2 left it) is cleared part by part; a file the
    user put beside the parts stays, and the README's pipeline folder is never taken for a demo's."""
    from galclip.demo import DEMO_PARTS, clear_earlier_demo
    from galclip.errors import GalclipError
    from galclip.outputs import write_marker

    def earlier_demo(root: Path, marked: bool) -> None:
        for part in ("data", "heldout"):
            (root / part).mkdir(parents=True)
            (root / part / "survey.h5").write_bytes(b"h5")
        (root / "features.zarr").mkdir()
        (root / "features.zarr" / "zarr.json").write_text(json.dumps({"attributes": {"galclip": {}}}))
        for part, name in (
            ("heads", "heads.pt"),
            ("report", "report.html"),
            ("index", "index.json"),
            ("predict", "catalogue.fits"),
        ):
            (root / part).mkdir()
            (root / part / name).write_bytes(b"x")
        if marked:
            write_marker(root, "demo")

    earlier_demo(tmp_path / "d", marked=True)
    (tmp_path / "d" / "README-mine.txt").write_text("mine")
    clear_earlier_demo(tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [".galclip-output.json", "README-mine.txt"]
    earlier_demo(tmp_path / "old", marked=False)
    clear_earlier_demo(tmp_path / "old")
    assert list((tmp_path / "old").iterdir()) == []
    pipeline = tmp_path / "work"  # data/, features.zarr, heads/ ... of the README's commands: the user's work
    earlier_demo(pipeline, marked=False)
    shutil.rmtree(pipeline / "heldout")
    shutil.rmtree(pipeline / "predict")
    with pytest.raises(GalclipError, match="which 'galclip demo' did not write"):
        clear_earlier_demo(pipeline)
    assert sorted(p.name for p in pipeline.iterdir()) == sorted(
        set(DEMO_PARTS) - {"heldout", "predict", "features.zarr.lock"}
    )


def test_help_lists_every_command_once_in_pipeline_order():
    from galclip.cli import COMMANDS

    out = CliRunner().invoke(main, ["--help"]).output
    listed = [
        line.split()[0]
        for line in out.split("Commands:")[1].splitlines()
        if line.startswith("  ") and not line.startswith("    ")
    ]
    assert listed == list(COMMANDS) and set(COMMANDS) == set(main.commands)
    assert out.count("write a mock survey") == 1
