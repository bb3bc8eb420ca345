"""Integrity end to end: a seeded corpus of single-bit flips over every kind of file galclip writes (each one
detected, or proven harmless), damaged chunks named by every reader, check --repair then extract back to the
same bytes, a real ENOSPC on a small tmpfs, and permission / read-only faults at the write call."""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import SHARDED_EXTRACT_ARGS as EXTRACT_ARGS

from galclip.cli import main
from galclip.config import ExtractConfig, HeadConfig, MockConfig
from galclip.store import FeatureStore


@pytest.fixture(scope="module")
def artefacts(tiny_mock, tmp_path_factory) -> dict[str, Path]:
    """One of everything galclip writes: a store (4 shards), heads, an index, and FITS and CSV catalogues."""
    from galclip.data.mock.survey import generate_mock
    from galclip.extract.run import run_extraction
    from galclip.heads.train import train_heads
    from galclip.index.build import build_indexes
    from galclip.predict.run import predict_catalogue

    root = tmp_path_factory.mktemp("artefacts")
    run_extraction(tiny_mock, root / "store.zarr", ExtractConfig(rows_per_shard=16, batch_size=32), progress=False)
    train_heads(
        root / "store.zarr", root / "heads", HeadConfig(epochs=1, batch_size=16, image_hidden=64), progress=False
    )
    build_indexes(root / "store.zarr", root / "heads", root / "index")
    generate_mock(MockConfig(pairs=12, seed=8, batch_size=12, n_groups=1, modality="image"), root / "new")
    for fmt in ("fits", "csv"):
        predict_catalogue(
            root / "index", root / "new", root / f"cat.{fmt}", k=4, progress=False, work=root / "new.features.zarr"
        )
    return {
        "store": root / "store.zarr",
        "heads": root / "heads",
        "index": root / "index",
        "fits": root / "cat.fits",
        "csv": root / "cat.csv",
        "root": root,
    }


def _check(path: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["-q", "check", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def _same_meaning(kind: str, file: Path, original: bytes, artefacts: dict) -> bool:
    """A flip that ``check`` let through must leave what galclip reads unchanged."""
    if file.name.endswith(".json"):
        try:
            return json.loads(file.read_bytes()) == json.loads(original)
        except ValueError:
            return False
    if kind == "heads":
        from galclip.heads.checkpoint import load_heads

        now = load_heads(file)[1]
        file_bytes = file.read_bytes()
        file.write_bytes(original)
        then = load_heads(file)[1]
        file.write_bytes(file_bytes)
        same = all(torch.equal(now["state_dict"][k], then["state_dict"][k]) for k in then["state_dict"])
        return same and {k: v for k, v in now.items() if k != "state_dict"} == {
            k: v for k, v in then.items() if k != "state_dict"
        }
    return False


def test_fault_injection_corpus_every_flip_detected_or_harmless(artefacts):
    """At least 200 seeded single-bit flips over store chunks and zarr.json files, index files and index.json,
    the heads weights and both catalogue formats. Zero silent."""
    root = artefacts["root"]
    kinds = {
        "store chunk": [p for p in artefacts["store"].rglob("*") if p.is_file() and "/c/" in str(p)],
        "store zarr.json": sorted(artefacts["store"].rglob("zarr.json")),
        # the ownership marker is no index data (galclip.outputs): a flip there only changes who may replace the folder
        "index file": [p for p in artefacts["index"].iterdir() if p.name not in ("index.json", ".galclip-output.json")],
        "index.json": [artefacts["index"] / "index.json"],
        "heads": [artefacts["heads"] / "heads.pt"],
        "catalogue fits": [artefacts["fits"]],
        "catalogue csv": [artefacts["csv"]],
    }
    target = {
        "store chunk": "store",
        "store zarr.json": "store",
        "index file": "index",
        "index.json": "index",
        "heads": "heads",
        "catalogue fits": "fits",
        "catalogue csv": "csv",
    }
    rng = np.random.default_rng(2024)
    counts = {kind: {"flips": 0, "detected": 0, "harmless": 0, "silent": 0} for kind in kinds}
    silent = []
    for i in range(30 * len(kinds)):
        kind = list(kinds)[i % len(kinds)]
        file = kinds[kind][int(rng.integers(len(kinds[kind])))]
        original = file.read_bytes()
        offset, bit = int(rng.integers(len(original))), int(rng.integers(8))
        damaged = bytearray(original)
        damaged[offset] ^= 1 << bit
        file.write_bytes(bytes(damaged))
        try:
            code, output = _check(artefacts[target[kind]])
            counts[kind]["flips"] += 1
            if code == 1:
                counts[kind]["detected"] += 1
            elif _same_meaning(target[kind], file, original, artefacts):
                counts[kind]["harmless"] += 1
            else:
                counts[kind]["silent"] += 1
                silent.append((kind, str(file.relative_to(root)), offset, bit))
        finally:
            file.write_bytes(original)
    print("\nfault-injection corpus:", json.dumps(counts, indent=1))
    assert sum(c["flips"] for c in counts.values()) >= 200
    assert not silent, silent
    for path in ("store", "index", "heads", "fits", "csv"):  # everything restored: all verify again
        assert _check(artefacts[path])[0] == 0


def _flip(file: Path, offset: int = 200) -> bytes:
    original = file.read_bytes()
    damaged = bytearray(original)
    damaged[min(offset, len(damaged) - 1)] ^= 0x04
    file.write_bytes(bytes(damaged))
    return original


def test_every_reader_names_the_damaged_chunk_and_the_repair(artefacts, tmp_path):
    """heads, sweep, evaluate, index and predict stop on a damaged chunk with one message naming the array and the
    shard and saying 'galclip check STORE --repair' then 'galclip extract'; search refuses a damaged index file."""
    store = tmp_path / "store.zarr"
    shutil.copytree(artefacts["store"], store)
    _flip(store / "image_features" / "c" / "2" / "0")
    heads = artefacts["heads"]
    runs = {
        "heads": ["heads", store, tmp_path / "h", "--epochs", "1", "--batch-size", "16", "--no-progress"],
        "sweep": [
            "sweep",
            store,
            tmp_path / "s",
            "--grid",
            "lr=1e-4,3e-4",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--no-progress",
        ],
        "evaluate": ["evaluate", store, heads, tmp_path / "e", "--no-umap", "--k", "2"],
        "index": ["index", store, heads, tmp_path / "i", "--no-progress"],
    }
    for name, args in runs.items():
        result = CliRunner().invoke(main, ["-q", *map(str, args)])
        assert result.exit_code == 1, (name, result.output)
        assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
        text = result.output
        assert "array 'image_features', shard 2" in text and f"galclip check {store} --repair" in text, (name, text)
        assert "galclip extract" in text
    new = tmp_path / "new.features.zarr"  # predict's input: a store of new galaxies, damaged
    shutil.copytree(artefacts["root"] / "new.features.zarr", new)
    _flip(new / "image_features" / "c" / "0" / "0")
    result = CliRunner().invoke(
        main, ["-q", "predict", str(artefacts["index"]), str(new), str(tmp_path / "p.fits"), "-k", "2", "--no-progress"]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "array 'image_features', shard 0" in result.output and f"galclip check {new} --repair" in result.output
    assert not (tmp_path / "p.fits").exists()
    index = tmp_path / "index"
    shutil.copytree(artefacts["index"], index)
    _flip(index / "image.npy", 300)
    result = CliRunner().invoke(main, ["-q", "check", str(index)])
    assert result.exit_code == 1 and "image.npy" in result.output and "rebuild" in result.output
    (index / "image.npy").write_bytes((index / "image.npy").read_bytes() + b"x")  # a size mismatch too
    result = CliRunner().invoke(main, ["-q", "search", str(index), "--targetid", "1"])
    assert result.exit_code == 1 and "image.npy" in result.output and "galclip index" in result.output


def test_repair_round_trip_is_bitwise(tiny_mock, sharded_store, tmp_path):
    """Flip bits in two shards' features, a redshift chunk and the quarantine chunk of a re-extracted shard -> check
    names them -> check --repair marks the two shards incomplete and schedules the redshift chunk for rebuild -> the
    same extract -> bitwise equal."""
    store = tmp_path / "s.zarr"
    shutil.copytree(sharded_store, store)
    _flip(store / "image_features" / "c" / "1" / "0")
    _flip(store / "spectrum_features" / "c" / "3" / "0", 50)
    _flip(store / "redshift" / "c" / "2", 20)
    _flip(store / "quarantine" / "c" / "1", 10)
    result = CliRunner().invoke(main, ["-q", "check", str(store)])
    assert result.exit_code == 1
    assert "array 'image_features', shard 1 (rows 16-31" in result.output
    assert "array 'spectrum_features', shard 3 (rows 48-63" in result.output
    assert "array 'redshift', shard 2 (rows 32-47" in result.output
    result = CliRunner().invoke(main, ["-q", "check", str(store), "--repair"])
    assert (
        "marked 2 shard(s) incomplete [1, 3] and scheduled 1 damaged chunk(s) for rebuild ('redshift' shard 2)"
        in result.output
    ), result.output
    assert "re-extracts only the incomplete shards" in result.output and "bitwise identical" in result.output
    done = subprocess.run(
        [sys.executable, "-m", "galclip", "-q", "extract", str(tiny_mock), str(store), *EXTRACT_ARGS],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "extracted 32 pairs" in done.stdout  # only the two repaired shards
    _assert_same_tree(store, sharded_store)
    assert CliRunner().invoke(main, ["-q", "check", str(store)]).exit_code == 0


def _assert_same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


class _NoEncoder:
    """Stands in for the encoders: rebuilding what is derived from the input files must never build one."""

    def __init__(self, *args, **kwargs):
        raise AssertionError("an encoder was built")


def _printed_command(output: str) -> list[str]:
    """The 'galclip extract ...' line that check --repair prints, as the CLI's arguments."""
    line = next(line.strip() for line in output.splitlines() if line.strip().startswith("galclip extract "))
    return shlex.split(line)[1:]


def test_damaged_metadata_and_quarantine_are_rebuilt_from_the_inputs_without_an_encoder(
    tiny_mock, sharded_store, tmp_path, monkeypatch
):
    """Flipped bits in a targetid, a label and a quarantine chunk and a deleted split chunk -> check names each ->
    check --repair schedules them for rebuild, naming the input files, and marks no shard incomplete -> the command
    it prints rebuilds them from the survey and catalogue with no encoder built -> bitwise equal to the
    uninterrupted store, fingerprint included."""
    store = tmp_path / "s.zarr"
    shutil.copytree(sharded_store, store)
    _flip(store / "targetid" / "c" / "0", 20)
    _flip(store / "label_log_mstar" / "c" / "1", 20)
    _flip(store / "quarantine" / "c" / "2", 10)
    (store / "split" / "c" / "3").unlink()
    code, output = _check(store)
    assert code == 1
    for name, shard in (("targetid", 0), ("label_log_mstar", 1), ("quarantine", 2), ("split", 3)):
        assert f"array '{name}', shard {shard}" in output, output
    t0 = time.perf_counter()
    text = CliRunner().invoke(main, ["-q", "check", str(store), "--repair"]).output
    assert "scheduled 4 damaged chunk(s) for rebuild ('targetid' shard 0, 'split' shard 3" in text, text
    assert "the same 'galclip extract' command rebuilds them from those files" in text and "marked" not in text
    inputs = f"survey file {(tiny_mock / 'survey.h5').resolve()}; catalogue {(tiny_mock / 'provabgs.h5').resolve()}"
    assert inputs in text
    assert "without running an encoder" in text and "bitwise identical" in text
    assert FeatureStore.open(store).complete_mask().all()  # nothing to re-extract
    monkeypatch.setattr("galclip.extract.run.Encoders", _NoEncoder)
    result = CliRunner().invoke(main, ["-q", *_printed_command(text), "--no-progress"])
    seconds = time.perf_counter() - t0
    assert result.exit_code == 0, result.output
    print(f"\ncheck --repair + extract rebuilt 4 derived chunks in {seconds:.2f} s, no encoder built")
    _assert_same_tree(store, sharded_store)
    assert _check(store)[0] == 0
    assert FeatureStore.open(store).fingerprint() == FeatureStore.open(sharded_store).fingerprint()


def test_a_rebuild_names_the_input_files_that_are_gone_or_changed(tiny_mock, sharded_store, tmp_path):
    """A damaged label chunk, and its inputs taken away or changed in turn: the survey file moved away (check
    --repair and extract name it and the fix), the catalogue moved away (the same), a catalogue whose labels
    changed in the intact shards' rows or only in the damaged shard's (refused by the intact chunks, then by the
    SHA-256 recorded at creation). Nothing in the store is written."""
    import h5py

    store = tmp_path / "s.zarr"
    shutil.copytree(sharded_store, store)
    _flip(store / "label_redshift" / "c" / "1", 20)
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    survey, catalogue = tiny_mock / "survey.h5", tiny_mock / "provabgs.h5"
    away = tmp_path / "away"
    away.mkdir()
    extract = ["-q", "extract", str(tiny_mock), str(store), *EXTRACT_ARGS]
    try:
        survey.rename(away / survey.name)
        text = CliRunner().invoke(main, ["-q", "check", str(store), "--repair"]).output
        assert f"{survey.resolve()}: the survey file it is rebuilt from is not there" in text, text
        assert "Put them back where they were" in text and "restore the store from a copy" in text
        result = CliRunner().invoke(main, extract)  # the CLI refuses the folder, now without survey files, first
        assert result.exit_code == 1 and str(tiny_mock) in result.output and "Traceback" not in result.output
        from galclip.errors import InputError
        from galclip.extract.run import run_extraction

        with pytest.raises(InputError, match=f"was extracted from {survey.resolve()}, which is not there: put it back"):
            run_extraction(tiny_mock, store, ExtractConfig(rows_per_shard=16, variants=1, batch_size=8), progress=False)
        (away / survey.name).rename(survey)

        catalogue.rename(away / catalogue.name)
        text = CliRunner().invoke(main, ["-q", "check", str(store), "--repair"]).output
        assert f"{catalogue.resolve()}: the catalogue it is rebuilt from is not there" in text, text
        result = CliRunner().invoke(main, extract)
        assert result.exit_code == 1, result.output
        gone = f"{catalogue.resolve()}: the catalogue the labels of {store} are rebuilt from is not there"
        assert gone in result.output
        assert "restore the store from a copy" in result.output

        damaged = set(FeatureStore.open(sharded_store).targetids()[16:32].tolist())
        for rows, why in (("intact", "holds in its intact shards"), ("damaged", "SHA-256 of its values")):
            shutil.copy(away / catalogue.name, catalogue)
            with h5py.File(catalogue, "r+") as f:
                inside = np.isin(f["TARGETID"][:], list(damaged))
                f["Z_HP"][...] = f["Z_HP"][:] + np.where(inside == (rows == "damaged"), 0.01, 0.0)
            result = CliRunner().invoke(main, extract)
            assert result.exit_code == 1, (rows, result.output)
            assert f"{catalogue} (the catalogue): 'label_redshift' rebuilt from it differs" in result.output
            assert why in result.output and "put the original back" in result.output, (rows, result.output)
    finally:
        for path in (survey, catalogue):
            if (away / path.name).exists():
                os.replace(away / path.name, path)
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before


def test_a_real_enospc_on_a_small_tmpfs_then_resume_is_bitwise(tiny_mock, sharded_store, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("this machine cannot mount a tmpfs")
    try:
        cmd = [sys.executable, "-m", "galclip", "-q", "extract", str(tiny_mock), str(mnt / "s.zarr"), *EXTRACT_ARGS]
        full = subprocess.run(cmd, capture_output=True, text=True)
        assert full.returncode == 1, full.stderr
        assert "no space left on the device" in full.stderr and "free space and re-run the same command" in full.stderr
        assert "Traceback" not in full.stderr
        assert not [p for p in mnt.rglob("*") if ".tmp-" in p.name]
        subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], check=True)
        again = subprocess.run(cmd, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr
        _assert_same_tree(mnt / "s.zarr", sharded_store)
    finally:
        subprocess.run(["umount", str(mnt)])


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_permission_and_read_only_faults_at_the_write_call(tiny_mock, sharded_store, tmp_path, monkeypatch, code):
    """The third shard's write fails with EACCES / EROFS: one line naming the path and the fix, exit 1, the two
    shards before it kept; the same command afterwards gives the uninterrupted store."""
    store = tmp_path / "s.zarr"
    real = FeatureStore.write_shard
    calls = {"n": 0}

    def failing(self, shard, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(code, os.strerror(code), str(self.path / "image_features" / "c" / str(shard) / "0"))
        return real(self, shard, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "write_shard", failing)
    result = CliRunner().invoke(main, ["-q", "extract", str(tiny_mock), str(store), *EXTRACT_ARGS])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"{store}/image_features/c/2/0: " in result.output and "re-run the same command" in result.output
    assert ("permission denied" if code == errno.EACCES else "read-only file system") in result.output
    assert int(FeatureStore.open(store).complete_mask().sum()) == 2
    monkeypatch.setattr(FeatureStore, "write_shard", real)
    result = CliRunner().invoke(main, ["-q", "extract", str(tiny_mock), str(store), *EXTRACT_ARGS])
    assert result.exit_code == 0, result.output
    _assert_same_tree(store, sharded_store)


def test_an_older_store_is_readable_and_check_says_it_has_no_checksums(tmp_path):
    import zarr

    from galclip.store.feature_store import FORMAT_VERSION

    n = 8
    meta = {
        "targetid": np.arange(n) + 5,
        "split": np.zeros(n, np.uint8),
        "redshift": np.zeros(n),
        "label_redshift": np.full(n, np.nan),
        "label_log_mstar": np.full(n, np.nan),
    }
    store = FeatureStore.create(
        tmp_path / "old.zarr",
        meta,
        {"encoders": {}, "preprocessing": {}, "data": {}, "rows_per_shard": 4},
        rows_per_shard=4,
    )
    feats = {"image_features": np.ones((4, 2048), np.float32), "spectrum_features": np.ones((4, 256), np.float32)}
    store.write_shard(0, feats)
    store.write_shard(1, feats)
    group = zarr.open_group(str(tmp_path / "old.zarr"), mode="r+")
    attrs = dict(group.attrs["galclip"])
    attrs["format_version"] = 1  # what galclip 0.2 wrote (no hashes are checked for it)
    group.attrs["galclip"] = attrs
    assert FORMAT_VERSION == 2
    assert FeatureStore.open(tmp_path / "old.zarr").load()["image_features"].shape == (8, 2048)
    result = CliRunner().invoke(main, ["-q", "check", str(tmp_path / "old.zarr")])
    assert result.exit_code == 0 and "carry no checksums" in result.output


def test_a_moved_index_folder_finds_its_parts_or_names_the_missing_one(artefacts, tmp_path):
    """Store and heads are recorded relative to the index folder: move all three together and search still works;
    move the index alone and it still finds them where they were; take the store away and it is named."""
    from galclip.index.search import open_index

    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("store.zarr", "heads", "index"):
        shutil.copytree(artefacts["root"] / name, moved / name)
    index = open_index(moved / "index")
    assert index.store_path() == (moved / "store.zarr").resolve()
    assert index.check_heads() == (moved / "heads" / "heads.pt").resolve()
    alone = tmp_path / "alone" / "index"
    shutil.copytree(artefacts["index"], alone)
    assert open_index(alone).store_path() == artefacts["store"].resolve()  # found where it was
    shutil.rmtree(moved / "store.zarr")
    sidecar = json.loads((moved / "index" / "index.json").read_text())
    sidecar_abs = Path(sidecar["store_absolute"])
    hidden = sidecar_abs.with_name("hidden.zarr")
    sidecar_abs.rename(hidden)
    try:
        from galclip.errors import GalclipError

        with pytest.raises(GalclipError, match=r"the feature store it was built from \(fingerprint .*\) is not at"):
            open_index(moved / "index").store_path()
    finally:
        hidden.rename(sidecar_abs)


def _small_tmpfs(path: Path, size: str) -> Path:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode != 0:
        pytest.skip("this machine cannot mount a tmpfs")
    return path


@pytest.mark.parametrize("size", ["8k", "100k"])
def test_every_writer_onto_a_full_disk_says_so_in_one_line(artefacts, tmp_path, size):
    """mock, heads, sweep, evaluate, index and predict onto a tiny tmpfs (8k: the first write fails; 100k: later
    ones, e.g. the index's FAISS file after its embeddings). Each once ended otherwise: HDF5 segfaulted, the
    index's memory map died of SIGBUS, faiss.write_index and torch.save raised bare RuntimeErrors, zarr and
    matplotlib named no file. Now: one line naming a path under the mount, exit 1, no temporaries, no half folder."""
    mnt = _small_tmpfs(tmp_path / "small", size)
    store, heads = artefacts["store"], artefacts["heads"]
    try:
        runs = {
            "mock": ["mock", "--pairs", "64", "--out", mnt / "m"],
            "heads": [
                "heads",
                store,
                mnt / "h",
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--image-hidden",
                "64",
                "--no-progress",
            ],
            "sweep": [
                "sweep",
                store,
                mnt / "s",
                "--grid",
                "lr=1e-4,3e-4",
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--image-hidden",
                "64",
                "--no-progress",
            ],
            "evaluate": ["evaluate", store, heads, mnt / "e", "--no-umap", "--k", "2"],
            "index": ["index", store, heads, mnt / "i", "--no-progress"],
            "predict": [
                "predict",
                artefacts["index"],
                artefacts["root"] / "new",
                mnt / "p.fits",
                "-k",
                "2",
                "--no-progress",
            ],
        }
        for name, args in runs.items():
            run = subprocess.run(
                [sys.executable, "-m", "galclip", "-q", *map(str, args)], capture_output=True, text=True
            )
            assert run.returncode == 1, (name, run.returncode, run.stderr)
            assert f"Error: {mnt}/" in run.stderr and "no space left on the device" in run.stderr, (name, run.stderr)
            assert "free space and re-run" in run.stderr and "Traceback" not in run.stderr, (name, run.stderr)
            assert not [p for p in mnt.rglob("*") if ".tmp-" in p.name or ".old-" in p.name], name
            assert not (mnt / "i").exists()  # the index folder appears whole or not at all
            for p in list(mnt.iterdir()):  # free the space for the next command
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    finally:
        subprocess.run(["umount", str(mnt)])


def test_damaged_metadata_and_projection_mlp_are_named_never_read_as_fill(artefacts, tmp_path):
    """A missing metadata chunk would read back as fill values (NaN labels): every reader refuses it instead, and
    the message says the same 'galclip extract' rebuilds it from the input files. The stored Stein projection MLP is
    checked by check and by its reader, and without the checkpoint it was copied from it is not repairable."""
    store = tmp_path / "s.zarr"
    shutil.copytree(artefacts["store"], store)
    (store / "label_redshift" / "c" / "1").unlink()
    for args in (
        ["info", store],
        ["evaluate", store, artefacts["heads"], tmp_path / "e", "--no-umap", "--k", "2"],
        ["check", store],
    ):
        result = CliRunner().invoke(main, ["-q", *map(str, args)])
        assert result.exit_code == 1 and "Traceback" not in result.output, (args[0], result.output)
        assert "'label_redshift', shard 1" in result.output, (args[0], result.output)
    result = CliRunner().invoke(main, ["-q", "check", str(store), "--repair"])
    assert "scheduled 1 damaged chunk(s) for rebuild ('label_redshift' shard 1)" in result.output, result.output
    assert "Not repairable" not in result.output
    with pytest.raises(Exception, match="rebuilds it from them without running an encoder"):
        FeatureStore.open(store).read_meta("label_redshift")

    rng = np.random.default_rng(0)
    fc = {
        "0.weight": rng.standard_normal((8, 8), np.float32),
        "0.bias": np.zeros(8, np.float32),
        "2.weight": rng.standard_normal((4, 8), np.float32),
        "2.bias": np.zeros(4, np.float32),
    }
    meta = {
        "targetid": np.arange(4, dtype=np.int64),
        "split": np.zeros(4, np.uint8),
        "redshift": np.zeros(4, np.float32),
        "label_redshift": np.zeros(4, np.float32),
        "label_log_mstar": np.zeros(4, np.float32),
    }
    path = tmp_path / "fc.zarr"
    s = FeatureStore.create(path, meta, {"encoders": {}, "preprocessing": {}, "data": {}}, 4, moco_fc=fc)
    assert (path / "moco_fc" / "0.bias" / "c" / "0").exists()  # an all-zero bias is written all the same
    for key, value in s.moco_fc().items():
        np.testing.assert_array_equal(value, fc[key])
    _flip(path / "moco_fc" / "0.weight" / "c" / "0" / "0", 40)
    code, output = _check(path)
    assert code == 1 and "moco_fc/0.weight" in output
    with pytest.raises(Exception, match="projection MLP is damaged"):
        FeatureStore.open(path).moco_fc()
    result = CliRunner().invoke(main, ["-q", "check", str(path), "--repair"])  # it records no checkpoint to copy from
    assert "Not repairable in place: 1 damaged chunk(s)" in result.output and "'moco_fc/0.weight'" in result.output
    assert "restore the store from a copy" in result.output


def test_predict_verifies_the_index_hashes_and_search_never_tracebacks(artefacts, tmp_path):
    """A same-size flip inside image.npy changes predict's catalogue: predict checks every SHA-256 and refuses.
    A damaged rows.npz or .npy header (which plain search, checking sizes only, opens) is a message, not a
    traceback."""
    index = tmp_path / "index"
    shutil.copytree(artefacts["index"], index)
    original = _flip(index / "image.npy", 300)
    result = CliRunner().invoke(
        main,
        [
            "-q",
            "predict",
            str(index),
            str(artefacts["root"] / "new.features.zarr"),
            str(tmp_path / "p.fits"),
            "-k",
            "2",
            "--no-progress",
        ],
    )
    assert result.exit_code == 1 and "image.npy" in result.output and "galclip index" in result.output
    assert not (tmp_path / "p.fits").exists()
    (index / "image.npy").write_bytes(original)
    tid = str(int(np.load(index / "rows.npz")["targetid"][0]))
    for name, offset in (("rows.npz", 200), ("spectrum.npy", 30)):
        before = _flip(index / name, offset)
        result = CliRunner().invoke(main, ["-q", "search", str(index), "--targetid", tid])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (name, result.output)
        assert "Traceback" not in result.output and "galclip index" in result.output, (name, result.output)
        (index / name).write_bytes(before)
    assert CliRunner().invoke(main, ["-q", "search", str(index), "--targetid", tid]).exit_code == 0
