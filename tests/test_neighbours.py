"""Exact neighbours and the zero-shot k-NN regression, against numpy brute force and sklearn."""

from __future__ import annotations

import math

import numpy as np
import pytest

from galclip import neighbours as neighbours_mod
from galclip.neighbours import (
    drop_self,
    flat_index,
    knn_regress,
    l2_normalise,
    r2_score,
    split_for_knn,
    top_k,
    zero_shot_split,
    zero_shot_table,
)


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# --- search -------------------------------------------------------------------------------


def test_l2_normalise_unit_rows_and_zero_rows_stay_zero():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0]])
    out = l2_normalise(x)
    assert out.dtype == np.float32 and out.shape == (3, 2)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(out[1], [0.0, 0.0])
    np.testing.assert_allclose(out[2], [1.0, 0.0])


def test_top_k_ip_matches_numpy_brute_force():
    rng = np.random.default_rng(0)
    base, queries = _unit(rng, 500, 32), _unit(rng, 40, 32)
    scores, ids = top_k(flat_index(base, "ip"), queries, 7)
    sims = queries.astype(np.float64) @ base.T.astype(np.float64)
    ref = np.argsort(-sims, axis=1)[:, :7]
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(ids, ref)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, ref, axis=1), atol=1e-5)


def test_top_k_l2_matches_numpy_brute_force():
    rng = np.random.default_rng(1)
    base, queries = rng.standard_normal((300, 16)), rng.standard_normal((25, 16))
    scores, ids = top_k(flat_index(base, "l2"), queries, 5)
    d2 = ((queries[:, None, :] - base[None]) ** 2).sum(-1)
    ref = np.argsort(d2, axis=1)[:, :5]
    np.testing.assert_array_equal(ids, ref)
    np.testing.assert_allclose(scores, np.take_along_axis(d2, ref, axis=1), rtol=1e-4)


def test_top_k_rejects_bad_arguments():
    index = flat_index(np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="k must be"):
        top_k(index, np.eye(3), 4)
    with pytest.raises(ValueError, match="dimension"):
        top_k(index, np.ones((1, 4)), 1)
    with pytest.raises(ValueError, match="metric"):
        flat_index(np.eye(3), "cosine")


# --- k-NN ---------------------------------------------------------------------------------


def _sklearn_knn(train_x, train_y, query_x, k):
    from sklearn.neighbors import KNeighborsRegressor

    return KNeighborsRegressor(n_neighbors=k, weights="distance").fit(train_x, train_y).predict(query_x)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_knn_regress_matches_sklearn_including_exact_duplicates(dtype):
    rng = np.random.default_rng(4)
    train_x = rng.standard_normal((300, 12)).astype(dtype)
    train_y = rng.standard_normal(300)
    # two training rows at the same point with different targets
    train_x[7] = train_x[3]
    query_x = np.concatenate(
        [rng.standard_normal((40, 12)).astype(dtype), train_x[[0, 3, 150]]]
    )  # exact duplicates of training points
    for k in (2, 5, 16):
        ours = knn_regress(train_x, train_y, query_x, k=k)
        assert ours.dtype == np.float64 and ours.shape == (43,)
        np.testing.assert_allclose(ours, _sklearn_knn(train_x, train_y, query_x, k), rtol=0, atol=1e-6)
    # k=1: skip query 41, whose two zero-distance neighbours tie at the k-th place (sklearn
    # documents the winner of such a tie as dependent on training order)
    keep = np.arange(43) != 41
    np.testing.assert_allclose(
        knn_regress(train_x, train_y, query_x[keep], k=1),
        _sklearn_knn(train_x, train_y, query_x[keep], 1),
        rtol=0,
        atol=1e-6,
    )
    # zero-distance rule: plain mean of the zero-distance neighbours
    ours = knn_regress(train_x, train_y, query_x, k=16)
    assert ours[40] == train_y[0]
    assert ours[41] == pytest.approx((train_y[3] + train_y[7]) / 2, abs=1e-12)


def test_knn_regress_k_equal_to_n_and_too_large():
    rng = np.random.default_rng(5)
    x, y, q = rng.standard_normal((10, 3)), rng.standard_normal(10), rng.standard_normal((4, 3))
    np.testing.assert_allclose(knn_regress(x, y, q, k=10), _sklearn_knn(x, y, q, 10), atol=1e-6)
    with pytest.raises(ValueError, match="k=11 but only 10 training rows"):
        knn_regress(x, y, q, k=11)


def test_knn_regress_chunked_distances(monkeypatch):
    monkeypatch.setattr(neighbours_mod, "_CHUNK_BYTES", 8 * 24 * 6 * 3)  # 3 queries per chunk
    rng = np.random.default_rng(6)
    x, y, q = rng.standard_normal((100, 6)), rng.standard_normal(100), rng.standard_normal((20, 6))
    np.testing.assert_allclose(knn_regress(x, y, q, k=16), _sklearn_knn(x, y, q, 16), atol=1e-6)


def test_split_for_knn_deterministic_disjoint_complete():
    train, test = split_for_knn(101, 0.3, seed=7)
    train2, test2 = split_for_knn(101, 0.3, seed=7)
    np.testing.assert_array_equal(train, train2)
    np.testing.assert_array_equal(test, test2)
    assert len(test) == 30 and len(train) == 71
    np.testing.assert_array_equal(np.sort(np.r_[train, test]), np.arange(101))
    assert not np.array_equal(split_for_knn(101, 0.3, seed=8)[1], test)
    with pytest.raises(ValueError, match="test_fraction"):
        split_for_knn(10, 1.0, seed=0)


def test_r2_score_matches_sklearn():
    from sklearn.metrics import r2_score as sk_r2

    rng = np.random.default_rng(8)
    t = rng.standard_normal(50)
    p = t + 0.5 * rng.standard_normal(50)
    assert r2_score(t, p) == pytest.approx(sk_r2(t, p), abs=1e-12)
    assert math.isnan(r2_score(np.ones(5), np.ones(5)))


def test_zero_shot_table_drops_nan_labels_and_handles_too_few():
    rng = np.random.default_rng(9)
    x_tr, x_te = rng.standard_normal((40, 4)), rng.standard_normal((20, 4))
    y_tr, y_te = x_tr[:, 0].copy(), x_te[:, 0].copy()
    y_tr[:5] = np.nan
    y_te[:3] = np.nan
    sparse = np.full(40, np.nan)
    sparse[:4] = 1.0
    table = zero_shot_table({"a": (x_tr, x_te)}, {"good": (y_tr, y_te), "sparse": (sparse, y_te)}, k=5)
    good = table["a"]["good"]
    assert good["pred"].shape == good["true"].shape == (17,)
    np.testing.assert_allclose(good["pred"], _sklearn_knn(x_tr[5:], y_tr[5:], x_te[3:], 5), atol=1e-6)
    assert good["r2"] == pytest.approx(r2_score(y_te[3:], good["pred"]))
    assert math.isnan(table["a"]["sparse"]["r2"]) and table["a"]["sparse"]["pred"].size == 0


def test_zero_shot_table_notes_once_per_call(caplog):
    rng = np.random.default_rng(10)
    x_tr, x_te = rng.standard_normal((10, 4)), rng.standard_normal((5, 4))
    y_tr, y_te = rng.standard_normal(10), rng.standard_normal(5)
    sources = {name: (x_tr, x_te) for name in ("a", "b", "c")}
    with caplog.at_level("DEBUG", logger="galclip.neighbours"):
        table = zero_shot_table(sources, {"z": (y_tr, y_te), "m": (y_tr, y_te)}, k=64)
    assert all(math.isnan(table[s][t]["r2"]) for s in sources for t in ("z", "m"))
    assert len([r for r in caplog.records if "k=64" in r.getMessage()]) == 1


def test_zero_shot_split_uses_rows_with_any_label():
    z = np.array([0.1, np.nan, 0.3, np.nan, 0.5, 0.6, 0.7, 0.8])
    m = np.array([10.0, 10.5, np.nan, np.nan, 11.0, 11.2, 9.9, 10.1])
    train, test = zero_shot_split({"redshift": z, "log_mstar": m}, 0.5, seed=0)
    assert 3 not in train and 3 not in test  # no label at all
    np.testing.assert_array_equal(np.sort(np.r_[train, test]), [0, 1, 2, 4, 5, 6, 7])
    a, b = split_for_knn(7, 0.5, 0)
    np.testing.assert_array_equal(train, np.array([0, 1, 2, 4, 5, 6, 7])[a])


def test_drop_self_removes_the_query_or_the_last_hit():
    ids = np.array([[4, 1, 2], [0, 3, 5]])
    scores = np.array([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]], np.float32)
    s, i = drop_self(scores, ids, np.array([1, 9]))
    np.testing.assert_array_equal(i, [[4, 2], [0, 3]])
    np.testing.assert_array_equal(s, scores[[[0], [1]], [[0, 2], [0, 1]]])


def test_weighted_quantile_matches_numpy_row_by_row():
    from galclip.neighbours import weighted_quantile

    rng = np.random.default_rng(4)
    values = np.round(rng.normal(size=(40, 16)), 1)  # rounded: ties
    weights = rng.random((40, 16))
    weights[0] = 0.0
    weights[1, :8] = 0.0
    for q in (0.0, 0.16, 0.5, 0.84, 1.0):
        got = weighted_quantile(values, weights, q)
        assert np.isnan(got[0])
        for i in range(1, 40):
            assert got[i] == np.quantile(values[i], q, weights=weights[i], method="inverted_cdf"), (q, i)


def test_knn_interval_brackets_the_mean_and_uses_distance_weights():
    from galclip.neighbours import knn_interval, knn_neighbours, weighted_mean

    rng = np.random.default_rng(5)
    train, y, query = rng.normal(size=(300, 6)), rng.normal(size=300), rng.normal(size=(50, 6))
    dist, idx = knn_neighbours(train, query, 16)
    mean, lo, hi = knn_interval(dist, y[idx])
    np.testing.assert_array_equal(mean, weighted_mean(dist, y[idx]))
    assert (lo <= hi).all() and (y[idx].min(1) <= lo).all() and (hi <= y[idx].max(1)).all()
    dist[0, 3] = 0.0  # an exact match carries all the weight
    mean, lo, hi = knn_interval(dist, y[idx])
    assert mean[0] == lo[0] == hi[0] == y[idx][0, 3]


def test_zero_shot_shortfall_counts_the_fit_half_and_what_is_needed():
    from galclip.config import EvalConfig
    from galclip.neighbours import zero_shot_shortfall, zero_shot_split

    rng = np.random.default_rng(4)
    z = rng.uniform(0, 1, 40)
    m = rng.uniform(9, 12, 40)
    z[::4] = m[::4] = np.nan  # 30 labelled of 40
    labels = {"redshift": z, "log_mstar": m}
    config = EvalConfig(k=16)
    train, _ = zero_shot_split(labels, config.knn_test_fraction, config.seed)
    short = zero_shot_shortfall(labels, config, test_fraction=0.1)
    assert short["fit_rows"] == {
        "redshift": int(np.isfinite(z[train]).sum()),
        "log_mstar": int(np.isfinite(m[train]).sum()),
    }
    assert short["needed_labelled"] == 34 and short["max_k"] == min(short["fit_rows"].values()) - 1
    assert "30 labelled pair(s)" in short["note"] and "about 454 pairs in all" in short["note"]  # 34 / (0.1 * 0.75)
    assert zero_shot_shortfall(labels, EvalConfig(k=short["max_k"])) is None


def test_conformal_stretch_and_pit_match_loops():
    """The split-conformal stretch is the smallest s covering ⌈0.68 (n + 1)⌉ calibration galaxies, and the PIT is the
    stretched neighbour distribution's CDF at the truth, both against plain loops."""
    from galclip.index.zero_shot import Neighbourhood, conformal_stretch

    rng = np.random.default_rng(4)
    centre, half, truth = rng.normal(size=200), rng.uniform(0.1, 1.0, 200), rng.normal(size=200) * 1.7
    s = conformal_stretch(centre, half, truth)
    covered = lambda s: sum(abs(t - c) <= s * h for t, c, h in zip(truth, centre, half))
    need = int(np.ceil(0.68 * 201))
    assert covered(s) >= need and covered(s * (1 - 1e-9)) < need
    assert conformal_stretch(centre, half, np.full(200, np.nan)) == 1.0

    dist, y = rng.uniform(0.1, 1.0, (30, 8)), rng.normal(size=(30, 8))
    y[3, 2] = np.nan  # a neighbour without the label weighs nothing
    hood = Neighbourhood.of(dist, y)
    t = rng.normal(size=30)
    got = hood.pit(t, 1.7)
    for i in range(30):
        keep = np.isfinite(y[i])
        w, v = 1 / dist[i][keep], hood.centre[i] + 1.7 * (y[i][keep] - hood.centre[i])
        assert got[i] == pytest.approx((w[v < t[i]].sum() + 0.5 * w[v == t[i]].sum()) / w.sum(), abs=1e-12)
        assert hood.mean[i] == pytest.approx(np.sum(w * y[i][keep]) / w.sum(), abs=1e-12)
