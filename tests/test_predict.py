"""galclip predict: single-modality inputs, the k-NN catalogue against sklearn and numpy, FITS/CSV formats, truth
metrics against loop-based references, resume after kill -9, torchrun, and the bad-input corpus."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from galclip.config import ExtractConfig, HeadConfig, MockConfig
from galclip.predict.catalogue import (
    ROW_DTYPE,
    CatalogueWriter,
    catalogue_columns,
    empty_rows,
    is_galclip_catalogue,
    read_catalogue,
)
from galclip.store import FeatureStore
from galclip.vocabulary import PROPERTIES, label_info

K = 4


@pytest.fixture(scope="module")
def reference_index(tiny_store, tmp_path_factory) -> dict[str, Path]:
    """Heads (2 epochs) and an index over the tiny store: the reference galaxies."""
    from galclip.heads.train import train_heads
    from galclip.index.build import build_indexes

    root = tmp_path_factory.mktemp("predict_ref")
    train_heads(tiny_store, root / "heads", HeadConfig(epochs=2, batch_size=16), progress=False)
    build_indexes(tiny_store, root / "heads", root / "index")
    return {"store": tiny_store, "heads": root / "heads", "index": root / "index"}


@pytest.fixture(scope="module")
def image_only(tmp_path_factory) -> Path:
    """24 new galaxies with only an image (seed 5), and their truth in provabgs.h5."""
    from galclip.data.mock.survey import generate_mock

    out = tmp_path_factory.mktemp("image_only")
    generate_mock(MockConfig(pairs=24, seed=5, batch_size=24, n_groups=2, modality="image"), out)
    return out


def _predict(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "galclip", "-q", "predict", *map(str, args), "--no-progress"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def predicted(reference_index, image_only, tmp_path_factory) -> Path:
    """The catalogue of the image-only galaxies, scored against their truth (FITS, k = 4, 6 shards)."""
    out = tmp_path_factory.mktemp("predicted") / "cat.fits"
    done = _predict(
        reference_index["index"],
        image_only,
        out,
        "-k",
        K,
        "--truth",
        image_only / "provabgs.h5",
        "--rows-per-shard",
        "4",
        "--batch-size",
        "4",
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return out


def test_mock_writes_single_modality_files(image_only):
    with h5py.File(image_only / "survey.h5") as f:
        for group in f.values():
            assert set(group) == {"image", "targetid", "ra", "dec"}
    from galclip.data.survey import SurveyReader

    with SurveyReader(image_only, require=()) as reader:
        assert reader.modalities == ("image",) and reader.n_rows == 24
        batch = reader.read(0, 3)
        assert batch.spectrum is None and batch.image.shape == (3, 152, 152, 3) and np.isnan(batch.redshift).all()
    from galclip.errors import InputError

    with pytest.raises(InputError, match="missing dataset.*'spectrum'.*galclip predict"):
        SurveyReader(image_only)  # pairs are still required where pairs are needed


def test_catalogue_matches_sklearn_and_numpy(reference_index, image_only, predicted):
    """Every estimate, interval, similarity and flag recomputed independently: sklearn's distance-weighted
    KNeighborsRegressor and a per-row numpy weighted quantile over the index's labelled training split, the interval
    stretched by the split-conformal factor recomputed by a loop over the labelled selection split."""
    from sklearn.neighbors import KNeighborsRegressor

    from galclip.heads.checkpoint import load_heads
    from galclip.index.search import open_index
    from galclip.store import FeatureStore

    rows, header = read_catalogue(predicted)
    work = predicted.with_name("cat.features.zarr")
    store = FeatureStore.open(work)
    assert list(store.feature_arrays) == ["image_features"]
    np.testing.assert_array_equal(rows["TARGETID"], store.targetids())
    heads, _ = load_heads(reference_index["heads"], FeatureStore.open(reference_index["store"]))
    z = heads.embed_modality("image", store.group["image_features"][:])
    q = z / np.linalg.norm(z, axis=1, keepdims=True)
    index = open_index(reference_index["index"])
    sel = (index.rows["split"] == 0) & np.isfinite(index.rows["redshift"]) & np.isfinite(index.rows["log_mstar"])
    ref = np.asarray(index.embeddings["image"])[sel]
    assert int(header["NREF"]) == sel.sum() and header["MODALITY"] == "image" and int(header["KNN_K"]) == K
    cal = (index.rows["split"] == 2) & np.isfinite(index.rows["redshift"]) & np.isfinite(index.rows["log_mstar"])
    cal_q = np.asarray(index.embeddings["image"])[cal].astype(np.float64)

    def neighbourhood(vector, y, leave_out=-1):
        d = np.linalg.norm(ref.astype(np.float64) - vector, axis=1)
        d[leave_out] = np.inf if leave_out >= 0 else d[leave_out]
        nn = np.argsort(d, kind="stable")[:K]
        w = 1.0 / d[nn]
        lo, hi = (np.quantile(y[nn], level, weights=w, method="inverted_cdf") for level in (0.16, 0.84))
        return (lo + hi) / 2, (hi - lo) / 2, np.sum(w * y[nn]) / np.sum(w)

    metrics = json.loads((predicted.with_name("cat_report") / "metrics.json").read_text())
    for label, col in (("redshift", "Z"), ("log_mstar", "LOGMSTAR")):
        y = index.rows[label][sel].astype(np.float64)
        sk = KNeighborsRegressor(n_neighbors=K, weights="distance").fit(ref.astype(np.float64), y)
        np.testing.assert_allclose(rows[f"{col}_PRED"], sk.predict(q.astype(np.float64)), rtol=1e-6, atol=1e-6)
        # the calibration galaxies: the selection split, and every reference galaxy with itself left out
        truth = [*index.rows[label][cal].astype(np.float64), *y]
        hoods = [neighbourhood(v, y) for v in cal_q] + [
            neighbourhood(ref[j].astype(np.float64), y, j) for j in range(len(y))
        ]
        scores = sorted(abs(t - c) / max(h, 1e-9) for t, (c, h, _) in zip(truth, hoods))
        stretch = scores[min(len(scores), int(np.ceil((len(scores) + 1) * 0.68))) - 1]
        assert metrics["interval_calibration"]["stretch"][label] == pytest.approx(stretch, rel=1e-9)
        for i in range(len(q)):
            c, h, mean = neighbourhood(q[i].astype(np.float64), y)
            h = max(h, 1e-9)
            assert rows[f"{col}_LO"][i] == pytest.approx(min(c - stretch * h, mean), abs=1e-9)
            assert rows[f"{col}_HI"][i] == pytest.approx(max(c + stretch * h, mean), abs=1e-9)
    sims = q.astype(np.float64) @ ref.astype(np.float64).T
    np.testing.assert_allclose(rows["SIM_TOP1"], sims.max(axis=1), atol=1e-5)
    assert (rows["N_NEIGHBOURS"] == K).all()
    np.testing.assert_array_equal(rows["OOD"], rows["SIM_TOP1"] < np.float32(float(header["OODTHR"])))
    assert (rows["Z_LO"] <= rows["Z_HI"]).all()


def test_one_galaxy_gets_the_same_prediction_from_the_catalogue_search_json_api_and_python(reference_index, tmp_path):
    """The one zero-shot predictor: the catalogue of the index's own store (each reference galaxy left out of its own
    neighbours), ``Index.search``, ``galclip search --json`` and ``/api/search`` agree to the bit, for a training
    galaxy and a test galaxy, whatever k and target the search asks for."""
    import warnings

    from click.testing import CliRunner

    from galclip.cli import main
    from galclip.index.search import open_index
    from galclip.serve.app import create_app, load_service

    out = tmp_path / "own.fits"
    done = _predict(reference_index["index"], reference_index["store"], out)
    assert done.returncode == 0, done.stderr
    rows, _ = read_catalogue(out)
    index = open_index(reference_index["index"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    client = TestClient(create_app(load_service(reference_index["index"])))
    split = dict(zip(index.rows["targetid"].tolist(), index.rows["split"].tolist()))
    picks = [next(int(t) for t in rows["TARGETID"] if split.get(int(t)) == s) for s in (0, 1)]  # train, test
    for tid in picks:
        r = rows[rows["TARGETID"] == tid][0]
        expected = {
            label: {"value": r[f"{p}_PRED"], "lo": r[f"{p}_LO"], "hi": r[f"{p}_HI"]}
            for label, p in ((label, label_info(label)[1]) for label in index.label_names)
        }
        assert len(expected) == 5  # every PROVABGS property
        expected |= {
            "similarity": float(np.float32(r["SIM_TOP1"])),
            "ood": bool(r["OOD"]),
            "k": 16,
        }
        for k, target in ((5, "image"), (12, "spectrum")):
            python = index.search(tid, query="image", target=target, k=k)["prediction"]
            python["similarity"] = float(np.float32(python["similarity"]))  # the catalogue keeps float32
            assert python == expected
            cli = CliRunner().invoke(
                main,
                [
                    "-q",
                    "search",
                    str(reference_index["index"]),
                    "--targetid",
                    str(tid),
                    "--target",
                    target,
                    "-k",
                    str(k),
                    "--json",
                ],
            )
            assert json.loads(cli.output)["prediction"] == index.search(tid, target=target, k=k)["prediction"]
            api = client.get(f"/api/search?targetid={tid}&query=image&target={target}&k={k}").json()
            assert api["prediction"] == index.search(tid, target=target, k=k)["prediction"]


def test_ood_threshold_is_the_reference_own_first_percentile(reference_index):
    from galclip.index.search import open_index
    from galclip.index.zero_shot import load_reference

    index = open_index(reference_index["index"])
    ref = load_reference(index, "image")
    sims = ref.embeddings.astype(np.float64) @ ref.embeddings.astype(np.float64).T
    np.fill_diagonal(sims, -np.inf)
    assert ref.ood_threshold == pytest.approx(np.percentile(sims.max(axis=1), 1.0), abs=1e-5)


def test_truth_metrics_and_report(image_only, predicted):
    """metrics.json's photo-z measures equal loop-based recomputations from the catalogue and the truth file."""
    metrics = json.loads((predicted.with_name("cat_report") / "metrics.json").read_text())
    rows, _ = read_catalogue(predicted)
    with h5py.File(image_only / "provabgs.h5") as f:
        truth = {
            int(t): (z, m) for t, z, m in zip(f["TARGETID"][:], f["Z_HP"][:], f["PROVABGS_LOGMSTAR_BF"][:]) if m > 0
        }
    dz, dm, in_z, in_m = [], [], [], []
    for r in rows:
        if int(r["TARGETID"]) in truth:
            zt, mt = truth[int(r["TARGETID"])]
            dz.append((r["Z_PRED"] - zt) / (1 + zt))
            dm.append(r["LOGMSTAR_PRED"] - mt)
            in_z.append(r["Z_LO"] <= zt <= r["Z_HI"])
            in_m.append(r["LOGMSTAR_LO"] <= mt <= r["LOGMSTAR_HI"])
    t = metrics["truth"]
    med = sorted(dz)[len(dz) // 2] if len(dz) % 2 else (sorted(dz)[len(dz) // 2 - 1] + sorted(dz)[len(dz) // 2]) / 2
    assert t["redshift"]["n"] == len(dz) > 15
    assert t["redshift"]["bias"] == pytest.approx(med, abs=1e-12)
    assert t["redshift"]["sigma_nmad"] == pytest.approx(1.4826 * np.median([abs(x - med) for x in dz]), abs=1e-12)
    assert t["redshift"]["outlier_fraction"] == pytest.approx(sum(abs(x) > 0.15 for x in dz) / len(dz))
    assert t["redshift"]["coverage"] == pytest.approx(sum(in_z) / len(in_z))
    assert t["log_mstar"]["coverage"] == pytest.approx(sum(in_m) / len(in_m))
    assert t["log_mstar"]["bias_dex"] == pytest.approx(np.median(dm), abs=1e-12)
    curve = t["redshift"]["coverage_curve"]
    assert curve["empirical"][curve["nominal"].index(0.68)] == pytest.approx(t["redshift"]["coverage"])
    assert all(a <= b + 1e-12 for a, b in zip(curve["empirical"], curve["empirical"][1:]))  # wider never covers less
    report = predicted.with_name("cat_report")
    assert {"report.html", "pred_vs_true.png", "coverage.png", "metrics.json"} <= {p.name for p in report.iterdir()}
    assert "σ_NMAD" in (report / "report.html").read_text()


def test_fits_catalogue_reads_back_in_astropy_with_units_and_provenance(predicted):
    import warnings

    from astropy.table import Table

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = Table.read(predicted)
    assert [str(w.message) for w in caught] == []  # no UnitsWarning: no TUNIT astropy cannot read
    rows, header = read_catalogue(predicted)
    # the mock's image-only galaxies have positions, and the index every PROVABGS property
    assert table.colnames == [c.name for c in catalogue_columns(PROPERTIES, positions=True)] == list(rows.dtype.names)
    np.testing.assert_array_equal(np.asarray(table["TARGETID"]), rows["TARGETID"])
    np.testing.assert_array_equal(np.asarray(table["OOD"]), rows["OOD"])
    at = table.colnames.index("LOGMSTAR_PRED") + 1
    assert table["LOGMSTAR_PRED"].unit is None and table.meta[f"TCOMM{at}"].startswith("log10(M*/solMass)")
    assert str(table["RA"].unit) == "deg" and str(table["TAGEMW_PRED"].unit) == "Gyr"
    assert table.meta["GALCLIP"] == "catalogue" and len(table.meta["HEADSSHA"]) == 16 and table.meta["STOREFP"]


def test_csv_and_fits_writers_agree(tmp_path):
    rows = empty_rows(7)
    rng = np.random.default_rng(0)
    rows["TARGETID"] = 39627000000000000 + np.arange(7)
    for name in ("Z_PRED", "Z_LO", "Z_HI", "LOGMSTAR_PRED", "SIM_TOP1"):
        rows[name][:5] = rng.random(5)
    rows["N_NEIGHBOURS"][:5] = 16
    rows["OOD"][2] = True
    for fmt in ("fits", "csv"):
        path = tmp_path / f"c.{fmt}"
        writer = CatalogueWriter(path, fmt, 7, {"MODALITY": "image"})
        writer.write(rows[:3])
        writer.write(rows[3:])
        writer.close()
        back, header = read_catalogue(path)
        assert is_galclip_catalogue(path) and header["MODALITY"] == "image"
        for name in ROW_DTYPE.names:
            np.testing.assert_allclose(back[name].astype(float), rows[name].astype(float), rtol=1e-8, equal_nan=True)
        if fmt == "fits":
            assert path.stat().st_size % 2880 == 0
    with pytest.raises(ValueError, match="announced"):
        short = CatalogueWriter(tmp_path / "short.csv", "csv", 3, {})
        short.write(rows[:2])
        short.close()


def test_feature_store_input_gives_the_same_catalogue(reference_index, predicted, tmp_path):
    """A store that already holds the features (here predict's own) is used as is: no encoder runs."""
    out = tmp_path / "again.fits"
    done = _predict(reference_index["index"], predicted.with_name("cat.features.zarr"), out, "-k", K)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "again.features.zarr").exists()
    a, _ = read_catalogue(out)
    b, _ = read_catalogue(predicted)
    for name in ROW_DTYPE.names:
        np.testing.assert_array_equal(a[name], b[name])


def test_same_features_as_the_reference_store(reference_index, tiny_mock, tmp_path):
    """The encoder runs with the reference store's weights and preprocessing: an image-only copy of 12 of its
    galaxies gets the features the store holds for them; each is left out of its own neighbours (the reference set is
    the index's whole labelled training split), and only those of the test split are scored against the store's
    labels."""
    from galclip.store import FeatureStore

    src = tiny_mock / "survey.h5"
    with h5py.File(src) as f, h5py.File(tmp_path / "subset.h5", "w") as g:
        first = f[sorted(f.keys(), key=int)[0]]
        g.create_dataset("image", data=first["image"][:12])
        g.create_dataset("targetid", data=first["targetid"][:12])
    out = tmp_path / "subset.csv"
    done = _predict(
        reference_index["index"],
        tmp_path / "subset.h5",
        out,
        "-k",
        K,
        "--batch-size",
        "32",
        "--truth",
        reference_index["store"],
    )
    assert done.returncode == 0, done.stderr
    # galaxies that fitted or chose the heads (train and selection splits) are not scored against the truth
    split = FeatureStore.open(reference_index["store"]).split()[:12]
    truth = json.loads((tmp_path / "subset_report" / "metrics.json").read_text())["truth"]
    assert truth["n_left_out_seen_in_training"] == int((split != 1).sum()) > 0
    assert truth["redshift"]["n"] <= int((split == 1).sum())
    ref = FeatureStore.open(reference_index["store"])
    mine = FeatureStore.open(tmp_path / "subset.features.zarr")
    np.testing.assert_allclose(mine.group["image_features"][:], ref.group["image_features"][:12], rtol=1e-5, atol=1e-5)
    rows, _ = read_catalogue(out)
    index_rows = np.load(reference_index["index"] / "rows.npz")
    assert int(_header_value(out, "NREF")) == int(
        ((index_rows["split"] == 0) & np.isfinite(index_rows["redshift"]) & np.isfinite(index_rows["log_mstar"])).sum()
    )
    n_in = int(np.isin(rows["TARGETID"], index_rows["targetid"][index_rows["split"] == 0]).sum())
    metrics = json.loads((tmp_path / "subset_report" / "metrics.json").read_text())
    assert metrics["reference"]["n_in_reference"] <= n_in


def _header_value(path: Path, key: str) -> str:
    return read_catalogue(path)[1][key]


def test_kill_minus_9_then_resume_gives_the_same_catalogue(reference_index, image_only, predicted, tmp_path):
    out = tmp_path / "killed.fits"
    work = tmp_path / "killed.features.zarr"
    cmd = [
        sys.executable,
        "-m",
        "galclip",
        "-q",
        "predict",
        str(reference_index["index"]),
        str(image_only),
        str(out),
        "-k",
        str(K),
        "--truth",
        str(image_only / "provabgs.h5"),
        "--rows-per-shard",
        "4",
        "--batch-size",
        "4",
        "--no-progress",
    ]
    from galclip.store import FeatureStore

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed = time.time() + 120, False
    while proc.poll() is None and time.time() < deadline:
        if (work / "zarr.json").exists() and FeatureStore.open(work).complete_mask().sum() >= 1:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    proc.wait()
    assert killed and not out.exists()
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == predicted.read_bytes()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_torchrun_two_ranks_write_the_same_catalogue(reference_index, image_only, predicted, tmp_path):
    out = tmp_path / "ranks.fits"
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "galclip",
        "-q",
        "predict",
        str(reference_index["index"]),
        str(image_only),
        str(out),
        "-k",
        str(K),
        "--rows-per-shard",
        "4",
        "--batch-size",
        "4",
        "--no-progress",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a, _ = read_catalogue(out)
    b, _ = read_catalogue(predicted)
    for name in ROW_DTYPE.names:
        np.testing.assert_array_equal(a[name], b[name])


@pytest.fixture(scope="module")
def unlabelled_index(tiny_mock, tmp_path_factory) -> Path:
    """An index over a store extracted without a catalogue: no labelled reference galaxies."""
    from galclip.extract.run import run_extraction
    from galclip.heads.train import train_heads
    from galclip.index.build import build_indexes

    root = tmp_path_factory.mktemp("unlabelled")
    run_extraction(tiny_mock / "survey.h5", root / "f.zarr", ExtractConfig(batch_size=32), progress=False)
    train_heads(root / "f.zarr", root / "heads", HeadConfig(epochs=1, batch_size=16), progress=False)
    build_indexes(root / "f.zarr", root / "heads", root / "index")
    return root / "index"


@pytest.fixture(scope="module")
def other_weights_store(image_only, tmp_path_factory) -> Path:
    """The image-only galaxies' features from other (seed 1) random weights."""
    from galclip.extract.run import run_extraction

    store = tmp_path_factory.mktemp("other") / "other.zarr"
    run_extraction(image_only, store, ExtractConfig(seed=1, modalities=("image",), batch_size=32), progress=False)
    return store


def test_bad_input_is_named_and_nothing_is_written(
    reference_index, image_only, unlabelled_index, other_weights_store, tmp_path
):
    with h5py.File(tmp_path / "labels_only.h5", "w") as f:
        f.create_dataset("targetid", data=np.arange(5, dtype=np.int64))
        f.create_dataset("redshift", data=np.zeros(5, np.float32))
    (tmp_path / "taken.fits").write_text("my own file\n")
    index = reference_index["index"]
    cases = [
        ([index, tmp_path / "labels_only.h5", tmp_path / "a.fits"], "holds neither 'image' nor 'spectrum'"),
        ([unlabelled_index, image_only, tmp_path / "b.fits"], "no labelled reference galaxies"),
        ([index, image_only, tmp_path / "c.fits", "-k", "1000"], "-k 1000 is larger than the"),
        ([index, other_weights_store, tmp_path / "d.fits"], "encoders.image.weights.seed"),
        ([index, image_only, tmp_path / "taken.fits"], "exists and is not a galclip catalogue"),
        ([index, image_only, tmp_path / "e.fits", "--modality", "spectrum"], "holds no spectra"),
        ([index, image_only, tmp_path / "f.fits", "--truth", reference_index["store"]], "holds no labels"),
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, message in cases:
        done = _predict(*args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert message in done.stderr, (message, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no catalogue, work store or report was started
    assert (tmp_path / "taken.fits").read_text() == "my own file\n"


def test_predicts_work_store_is_searchable_with_also_and_append(reference_index, predicted, tmp_path):
    """An index over the paired store and predict's image-only work store: spectrum -> image reaches the image-only
    galaxies, the records say which have a spectrum, and --append gives what a fresh build gives."""
    from click.testing import CliRunner

    from galclip.cli import main
    from galclip.index.build import build_indexes
    from galclip.index.query import Filters
    from galclip.index.search import open_index

    work = predicted.with_name("cat.features.zarr")
    side = build_indexes(reference_index["store"], reference_index["heads"], tmp_path / "both", also=(work,))
    assert [s["modalities"] for s in side["stores"]] == [["image", "spectrum"], ["image"]]
    assert side["indexes"]["image"]["ntotal"] == 64 + 24 and side["indexes"]["spectrum"]["ntotal"] == 64
    idx = open_index(tmp_path / "both")
    tid = int(idx.rows["targetid"][3])
    got = idx.search(tid, query="spectrum", target="image", k=87, dedup_arcsec=0)
    image_only = {n["targetid"] for n in got["neighbours"] if not n["has_spectrum"]}
    assert image_only == set(FeatureStore.open(work).targetids().tolist())
    # exact search: the same ranking as numpy over every image vector
    q = idx.vectors_at("spectrum", [3])[0]
    order = np.argsort(-(idx.embeddings["image"] @ q), kind="stable")
    assert [n["targetid"] for n in got["neighbours"]] == [
        int(idx.rows["targetid"][idx.members("image")[i]]) for i in order
    ][:87]
    with_spectrum = idx.search(tid, query="spectrum", target="image", k=10, filters=Filters(has_spectrum=True))
    assert all(n["has_spectrum"] for n in with_spectrum["neighbours"])
    lonely = int(next(iter(image_only)))
    with pytest.raises(Exception, match="has no spectrum"):
        idx.search(lonely, query="spectrum")
    # ranking over the mixed index: the spectrum features hold the 64 paired galaxies only (numpy brute force)
    from galclip.discover import open_index as open_discovery_index

    found = open_discovery_index(tmp_path / "both")
    space = found.space("spectrum-features")
    raw = FeatureStore.open(reference_index["store"]).read("spectrum_features", 0, 64)[idx.rows["row"][:64]]
    mean, scale = space.stats()
    z = (raw - mean) / scale
    sims = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ (z[3] / np.linalg.norm(z[3]))
    sims[3] = -np.inf
    ranked = found.ranking([tid], space="spectrum-features", n=63)
    np.testing.assert_array_equal(ranked.positions, np.argsort(-sims, kind="stable")[:63])
    with pytest.raises(Exception, match="has no spectrum features"):
        found.ranking([lonely], space="spectrum-features")
    at = idx.find(lonely)  # in the embedding space an image-only galaxy is its image embedding
    np.testing.assert_allclose(found.space("embedding").vectors([at])[0], idx.vectors_at("image", [at])[0], atol=1e-6)
    # --append onto an index of the paired store alone: the same vectors, rows and answers as the fresh build
    appended = tmp_path / "appended"
    build_indexes(reference_index["store"], reference_index["heads"], appended)
    run = CliRunner().invoke(main, ["-q", "index", "--append", str(work), str(appended), "--no-progress"])
    assert run.exit_code == 0, run.output
    again = open_index(appended, verify_hashes=True)
    for m in ("image", "spectrum"):
        np.testing.assert_array_equal(np.asarray(again.embeddings[m]), np.asarray(idx.embeddings[m]))
    assert set(again.rows) == set(idx.rows)
    for key in idx.rows:
        np.testing.assert_array_equal(again.rows[key], idx.rows[key])
    assert again.search(tid, query="spectrum", target="image", k=20) == idx.search(
        tid, query="spectrum", target="image", k=20
    )
    # the same store twice, or a store the heads' encoders did not make: refused by name, nothing changed
    before = (appended / "index.json").read_bytes()
    twice = CliRunner().invoke(main, ["-q", "index", "--append", str(work), str(appended), "--no-progress"])
    assert twice.exit_code != 0 and "already in the index" in twice.output
    assert (appended / "index.json").read_bytes() == before


def test_a_store_from_other_encoders_is_refused_by_name(reference_index):
    from types import SimpleNamespace

    from galclip.errors import GalclipError
    from galclip.index.build import _check_compatible

    ref = FeatureStore.open(reference_index["store"])
    other = json.loads(json.dumps(ref.provenance))
    other["encoders"]["image"]["weights"]["seed"] = 99  # other (seeded random) image weights
    fake = SimpleNamespace(provenance=other, feature_arrays={"image_features": (2048,)}, path=Path("other.zarr"))
    with pytest.raises(
        GalclipError, match=r"other\.zarr: its image features come from another encoder(.|\n)*weights\.seed"
    ):
        _check_compatible(ref, fake, Path("other.zarr"), reference_index["heads"])
