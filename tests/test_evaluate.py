"""Evaluation package tests: every function against a brute-force or sklearn reference."""

from __future__ import annotations

import base64
import dataclasses
import json
import math

import numpy as np
import pytest

from galclip.config import EvalConfig
from galclip.evaluate import retrieval as retrieval_mod
from galclip.evaluate.retrieval import inmodal_neighbour_deltas, median_rank, partner_ranks, partner_recall
from galclip.neighbours import l2_normalise


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# --- retrieval ----------------------------------------------------------------------------


def _argsort_ranks(q: np.ndarray, t: np.ndarray) -> np.ndarray:
    order = np.argsort(-(q.astype(np.float64) @ t.T.astype(np.float64)), axis=1)
    return np.array([int(np.flatnonzero(row == i)[0]) + 1 for i, row in enumerate(order)])


@pytest.mark.parametrize("chunk_bytes", [64 * 2**20, 4 * 37 * 10])  # one chunk; many ragged ones
def test_partner_ranks_match_argsort_reference(monkeypatch, chunk_bytes):
    monkeypatch.setattr(retrieval_mod, "_CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(2)
    q = _unit(rng, 37, 8)
    t = l2_normalise(q + 0.8 * rng.standard_normal(q.shape))
    ranks = partner_ranks(q, t)
    assert ranks.dtype == np.int64
    np.testing.assert_array_equal(ranks, _argsort_ranks(q, t))


def test_partner_ranks_ties_are_pessimistic():
    q = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (6, 1))
    np.testing.assert_array_equal(partner_ranks(q, q), np.full(6, 6))


def test_a_nan_partner_score_is_never_a_hit():
    from galclip.evaluate.retrieval import non_finite_partners

    rng = np.random.default_rng(5)
    q = _unit(rng, 20, 8)
    t = q.copy()  # every partner is its own nearest: rank 1
    q[3] = np.nan  # a NaN query
    t[7] = np.nan  # a NaN partner
    t[5, 0] = abs(t[5, 0]) + 0.1
    q[5] = 0.0
    q[5, 0] = np.inf  # an infinite partner score
    ranks = partner_ranks(q, t)
    assert ranks[3] == ranks[5] == ranks[7] == 21 and non_finite_partners(ranks) == 3
    assert partner_recall(ranks, (1, 10, 20)) == {"recall@1": 17 / 20, "recall@10": 17 / 20, "recall@20": 17 / 20}
    assert non_finite_partners(partner_ranks(t[:3], t[:3])) == 0


def test_recall_and_median_rank_on_hand_built_ranks():
    ranks = np.array([1, 2, 5, 6, 10, 11, 100])
    rec = partner_recall(ranks)
    assert rec == {"recall@1": 1 / 7, "recall@5": 3 / 7, "recall@10": 5 / 7}
    assert partner_recall(ranks, ks=(100,)) == {"recall@100": 1.0}
    assert median_rank(ranks) == 6.0
    assert median_rank(np.array([1, 4])) == 2.5


def test_inmodal_deltas_small_for_informative_embedding():
    rng = np.random.default_rng(3)
    y = rng.uniform(0, 1, 200)
    emb = l2_normalise(np.c_[np.cos(y), np.sin(y), 0.01 * rng.standard_normal((200, 4))])
    y_obs = y.copy()
    y_obs[:20] = np.nan
    out = inmodal_neighbour_deltas(emb, y_obs, k=5, seed=0)
    assert out["k"] == 5
    assert out["n_pairs"] > 0 and math.isfinite(out["median_abs_delta_knn"])
    assert out["median_abs_delta_knn"] < 0.1 * out["median_abs_delta_random"]
    again = inmodal_neighbour_deltas(emb, y_obs, k=5, seed=0)
    assert again == out


# --- report and end to end -----------------------------------------------------------------


def test_write_report_is_one_self_contained_file(tmp_path):
    from galclip.evaluate.plots import plot_umap
    from galclip.evaluate.report import write_report
    from galclip.figures import plot_loss_curves

    figs_dir = tmp_path / "figs"
    f1 = plot_loss_curves(
        {"train_loss": [3.0, 2.0, 1.5], "val_loss": [3.1, 2.4, 2.0], "lr": [1e-3, 1e-3, 5e-4]}, figs_dir / "loss.png"
    )
    f2 = plot_umap(
        np.random.default_rng(0).standard_normal((30, 2)),
        {"redshift": np.r_[np.full(5, np.nan), np.linspace(0, 1, 25)]},
        figs_dir / "umap.png",
    )
    metrics = {
        "n_pairs": 10,
        "zero_shot_r2": {"image": {"redshift": 0.5, "log_mstar": None}},
        "retrieval": {"im2sp": {"recall@1": 0.1, "median_rank": 3.0}},
        "timings_s": {"heads": 1.25},
    }
    out_dir = tmp_path / "report"
    path = write_report(metrics, {"loss": f1, "umap": f2}, out_dir / "report.html")
    assert [p.name for p in out_dir.iterdir()] == ["report.html"]  # no temp file left behind
    text = path.read_text(encoding="utf-8")
    assert "http" not in text.lower().replace("http-equiv", "")
    assert "<script" not in text and "<link" not in text
    assert text.count('src="data:image/png;base64,') == 2
    for fig in (f1, f2):
        assert base64.b64encode(fig.read_bytes()).decode("ascii") in text
    assert "heads" in text and "0.5" in text


def _synthetic_inputs(n: int = 120, seed: int = 0):
    from galclip.evaluate.run import EvaluationInputs

    rng = np.random.default_rng(seed)
    z = rng.uniform(0.0, 0.6, n)
    mstar = 9.0 + 3.0 * z + 0.3 * rng.standard_normal(n)
    latent = np.c_[2 * z / 0.6, (mstar - 10) / 1.5, 0.5 * rng.standard_normal((n, 2))]  # (n, 4)
    mix = rng.standard_normal((4, 128))
    emb_image = latent @ mix + 0.15 * rng.standard_normal((n, 128)) + 3.0 * mix[:1]
    emb_spectrum = latent @ mix + 0.15 * rng.standard_normal((n, 128)) + 3.0 * mix[:1]
    redshift, log_mstar = z.copy(), mstar.copy()
    redshift[rng.random(n) < 0.15] = np.nan
    log_mstar[np.isnan(redshift)] = np.nan
    log_mstar[:3] = np.nan
    wave = np.linspace(3600, 9824, 64)
    return EvaluationInputs(
        targetid=np.arange(n, dtype=np.int64) + 1000,
        emb_image=emb_image.astype(np.float32),
        emb_spectrum=emb_spectrum.astype(np.float32),
        raw_image=(latent @ rng.standard_normal((4, 2048))).astype(np.float32),
        raw_spectrum=(latent @ rng.standard_normal((4, 256))).astype(np.float32),
        redshift=redshift,
        log_mstar=log_mstar,
        image_rgb=lambda idx: np.stack([np.full((8, 8, 3), (i % 10) / 10, np.float32) for i in idx]),
        spectrum=lambda idx: (wave, np.stack([np.sin(wave / 300 + i) for i in idx])),
        loss_history={"train_loss": [5.0, 4.0, 3.5], "val_loss": [5.1, 4.5, 4.2], "lr": [5e-4] * 3},
    )


def test_run_evaluation_end_to_end(tmp_path):
    from galclip.evaluate.run import run_evaluation

    inputs = _synthetic_inputs()
    config = dataclasses.replace(EvalConfig(), umap=False, k=8)
    returned = run_evaluation(inputs, config, tmp_path, extra_metrics={"n_pairs": 999, "timings_s": {"extract": 2.0}})
    metrics = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=pytest.fail)
    assert metrics == returned
    assert metrics["n_pairs"] == 999 and metrics["n_eval"] == 120
    assert metrics["n_labelled"] == int(np.isfinite(inputs.redshift).sum())
    assert metrics["timings_s"]["extract"] == 2.0 and "eval_zero_shot" in metrics["timings_s"]
    for source in ("image", "spectrum", "cross", "cross_sp2im", "raw_image", "raw_spectrum"):
        for target in ("redshift", "log_mstar"):
            assert math.isfinite(metrics["zero_shot_r2"][source][target]), (source, target)
    for source in ("image", "spectrum", "cross", "cross_sp2im"):
        assert metrics["zero_shot_r2"][source]["redshift"] > 0.5, source
    for direction in ("im2sp", "sp2im"):
        r = metrics["retrieval"][direction]
        assert set(r) >= {"recall@1", "recall@5", "recall@10", "median_rank", "chance_recall@10"}
        assert r["chance_recall@10"] == pytest.approx(10 / 120)
        assert r["recall@10"] > 3 * r["chance_recall@10"]
        assert r["recall@1"] <= r["recall@5"] <= r["recall@10"]
    for direction in ("im2im", "sp2sp"):
        d = metrics["retrieval"][direction]["redshift"]
        assert d["median_abs_delta_knn"] < d["median_abs_delta_random"]
    expected = {"loss_curves", "zero_shot", "gallery_im2im", "gallery_sp2sp", "gallery_im2sp", "gallery_sp2im"}
    assert set(metrics["figures"]) == expected
    for name in metrics["figures"].values():
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(expected)


def test_photo_z_measures_and_the_photometry_baseline(tmp_path):
    """Every zero-shot source gets the photo-z measures beside R²; the photometry baseline equals sklearn's
    distance-weighted k-NN on the standardised r, g-r, r-z; the report names the winner."""
    from sklearn.neighbors import KNeighborsRegressor

    from galclip.evaluate.run import run_evaluation
    from galclip.neighbours import zero_shot_split
    from galclip.photoz import redshift_metrics

    inputs = _synthetic_inputs()
    rng = np.random.default_rng(1)
    z = np.nan_to_num(inputs.redshift, nan=0.3)
    r = 17 + 4 * z + 0.05 * rng.standard_normal(120)
    inputs.photometry = np.c_[r, 0.8 + 1.5 * z, 0.4 + z + 0.05 * rng.standard_normal(120)]
    config = dataclasses.replace(EvalConfig(), umap=False, k=8, supervised=False)
    metrics = run_evaluation(inputs, config, tmp_path)
    tr, te = zero_shot_split(inputs.labels(), config.knn_test_fraction, config.seed)
    x = inputs.photometry
    mean, std = x[tr].mean(0), x[tr].std(0)
    fit = np.isfinite(inputs.redshift[tr])
    ask = np.isfinite(inputs.redshift[te])
    sk = KNeighborsRegressor(n_neighbors=8, weights="distance").fit(
        ((x[tr] - mean) / std)[fit], inputs.redshift[tr][fit]
    )
    pred = sk.predict(((x[te] - mean) / std)[ask])
    truth = inputs.redshift[te][ask]
    expected = 1 - np.sum((truth - pred) ** 2) / np.sum((truth - truth.mean()) ** 2)
    assert metrics["zero_shot_r2"]["photometry"]["redshift"] == pytest.approx(expected, rel=1e-4)
    photoz = metrics["zero_shot_photoz"]["photometry"]["redshift"]
    reference = redshift_metrics(truth, pred)
    for key in ("sigma_nmad", "outlier_fraction", "bias"):
        assert photoz[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-9)
    assert 0 <= photoz["coverage"] <= 1 and photoz["n"] == ask.sum()
    assert set(metrics["zero_shot_photoz"]) == set(metrics["zero_shot_r2"])
    ranking = metrics["zero_shot_best"]["redshift"]["ranking"]
    assert [v for _, v in ranking] == sorted((v for _, v in ranking), reverse=True)
    assert metrics["zero_shot_best"]["redshift"]["best"] == ranking[0][0]
    assert "Which source wins" in (tmp_path / "report.html").read_text()


def test_photoz_measures_match_loops():
    from galclip.photoz import mass_metrics, redshift_metrics

    rng = np.random.default_rng(3)
    t = rng.uniform(0.05, 0.6, 201)
    p = t + 0.03 * (1 + t) * rng.standard_normal(201)
    p[:9] += 0.5  # outliers
    lo, hi = p - 0.04, p + 0.04
    m = redshift_metrics(t, p, lo, hi)
    dz = [(b - a) / (1 + a) for a, b in zip(t, p)]
    med = sorted(dz)[100]
    assert m["bias"] == pytest.approx(med)
    assert m["sigma_nmad"] == pytest.approx(1.4826 * sorted(abs(x - med) for x in dz)[100])
    assert m["outlier_fraction"] == pytest.approx(sum(abs(x) > 0.15 for x in dz) / 201)
    assert m["coverage"] == pytest.approx(sum(a <= b <= c for a, b, c in zip(lo, t, hi)) / 201)
    mm = mass_metrics(t * 10, p * 10)
    d = [10 * (b - a) for a, b in zip(t, p)]
    assert mm["bias_dex"] == pytest.approx(sorted(d)[100]) and mm["scatter_std_dex"] == pytest.approx(np.std(d))
    nan = redshift_metrics(np.r_[t, np.nan], np.r_[p, 0.1])
    assert nan["n"] == 201 and nan["sigma_nmad"] == pytest.approx(m["sigma_nmad"])


def test_run_evaluation_too_few_labels_records_null(tmp_path):
    from galclip.evaluate.run import run_evaluation

    inputs = _synthetic_inputs(n=30)
    inputs.redshift[:] = np.nan
    inputs.log_mstar[:] = np.nan
    inputs.log_mstar[:6] = 10.0 + np.arange(6)
    config = dataclasses.replace(EvalConfig(), umap=False, n_gallery_queries=1, gallery_k=3)
    metrics = run_evaluation(inputs, config, tmp_path)
    assert metrics["n_labelled"] == 6
    assert all(
        metrics["zero_shot_r2"][s][t] is None for s in metrics["zero_shot_r2"] for t in ("redshift", "log_mstar")
    )
    assert "null" in (tmp_path / "metrics.json").read_text()


def test_run_evaluation_rejects_mismatched_rows(tmp_path):
    from galclip.evaluate.run import run_evaluation

    inputs = _synthetic_inputs(n=20)
    inputs.emb_spectrum = inputs.emb_spectrum[:10]
    with pytest.raises(ValueError, match="emb_spectrum"):
        run_evaluation(inputs, EvalConfig(umap=False), tmp_path)


@pytest.mark.slow
def test_fit_umap_small_seeded(caplog):
    from galclip.index.embedding_map import fit_umap

    rng = np.random.default_rng(10)
    x = np.r_[rng.standard_normal((30, 16)) + 5, rng.standard_normal((30, 16)) - 5]
    coords = fit_umap(x, max_points=40, seed=0)  # 40 fitted, 20 transformed
    assert coords.shape == (60, 2) and coords.dtype == np.float32
    assert np.all(np.isfinite(coords))
    assert np.ptp(coords, axis=0).min() > 0
    np.testing.assert_array_equal(fit_umap(x[:3], max_points=40, seed=0), np.zeros((3, 2), np.float32))
    assert "at least 4 points" in caplog.text


@pytest.mark.slow
def test_umap_is_cached_by_content(tmp_path, monkeypatch):
    import galclip.index.embedding_map as em

    rng = np.random.default_rng(11)
    x = np.r_[rng.standard_normal((30, 16)) + 5, rng.standard_normal((30, 16)) - 5].astype(np.float32)
    first, hit = em.cached_umap(x, max_points=40, seed=0, cache_dir=tmp_path)
    assert not hit and len(list(tmp_path.glob("umap-*.npy"))) == 1
    np.testing.assert_array_equal(first, em.fit_umap(x, max_points=40, seed=0))  # the cache adds nothing to the fit
    fits = []
    monkeypatch.setattr(em, "fit_umap", lambda *a: fits.append(a) or np.zeros((len(a[0]), 2), np.float32))
    again, hit = em.cached_umap(x, max_points=40, seed=0, cache_dir=tmp_path)
    assert hit and not fits
    np.testing.assert_array_equal(again, first)
    x2 = x.copy()
    x2[0, 0] += 1e-3  # other embeddings (new heads) or other settings miss the cache
    assert not em.cached_umap(x2, max_points=40, seed=0, cache_dir=tmp_path)[1]
    assert not em.cached_umap(x, max_points=50, seed=0, cache_dir=tmp_path)[1]
    assert len(fits) == 2 and len(list(tmp_path.glob("umap-*.npy"))) == 3


def test_supervised_reference_learns_an_informative_feature():
    from galclip.evaluate.supervised import supervised_table

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    y = x[:, 0] * 2 + 0.1 * rng.normal(size=400)
    y_missing = y.copy()
    y_missing[:10] = np.nan
    table = supervised_table({"raw": (x[:300], x[300:])}, {"t": (y_missing[:300], y[300:])}, seed=0)
    assert table["raw"]["t"] > 0.8
    tiny = supervised_table({"raw": (x[:5], x[5:10])}, {"t": (y[:5], y[5:10])})
    assert np.isnan(tiny["raw"]["t"])


def test_the_product_protocol_matches_sklearn(tiny_store, tiny_heads):
    """The report's product protocol (k = 16 over the labelled train-split pairs in the query's modality, scored on the
    test pairs) equals sklearn's distance-weighted k-NN on the same embeddings."""
    from sklearn.metrics import r2_score
    from sklearn.neighbors import KNeighborsRegressor

    from galclip.evaluate.pipeline import product_protocol
    from galclip.heads.checkpoint import load_heads
    from galclip.neighbours import l2_normalise
    from galclip.store import FeatureStore

    store = FeatureStore.open(tiny_store)
    heads, _ = load_heads(tiny_heads, store)
    data, split, labels = store.load(), store.split(), store.labels()
    readable = store.require_complete()
    test = np.flatnonzero(readable & (split == 1))
    emb = {m: l2_normalise(heads.embed_modality(m, data[f"{m}_features"])) for m in ("image", "spectrum")}
    got = product_protocol(store, heads, readable, test, {m: e[test] for m, e in emb.items()}, labels)
    ref = np.flatnonzero(readable & (split == 0) & np.isfinite(labels["redshift"]) & np.isfinite(labels["log_mstar"]))
    assert got["reference_n"] == len(ref)
    for m in ("image", "spectrum"):
        for name in ("redshift", "log_mstar"):
            has = test[np.isfinite(labels[name][test])]
            y = labels[name].astype(np.float64)
            knn = KNeighborsRegressor(n_neighbors=16, weights="distance").fit(emb[m][ref], y[ref])
            # the heads embed other row blocks here than in the pipeline: float32 BLAS blocking, 1e-6
            assert got["r2"][m][name] == pytest.approx(r2_score(y[has], knn.predict(emb[m][has])), abs=1e-6)
