"""Find more like these and anomalies: streamed rankings against numpy brute force, marks files, the CLI's catalogues
and its refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from galclip.cli import main
from galclip.config import HeadConfig
from galclip.discover import open_index
from galclip.discover.marks import Marks, ids_argument, marks_csv, marks_from_text, marks_json
from galclip.discover.rank import TopN, anomalies, rank
from galclip.errors import GalclipError


@pytest.fixture(scope="module")
def discover_index(tiny_store, tmp_path_factory):
    from galclip.heads.train import train_heads
    from galclip.index.build import build_indexes

    root = tmp_path_factory.mktemp("discover")
    train_heads(tiny_store, root / "heads", HeadConfig(epochs=2, batch_size=16), progress=False)
    build_indexes(tiny_store, root / "heads", root / "index")
    return root / "index"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _dense(index, space: str) -> np.ndarray:
    """Every galaxy's vector in ``space``, computed here from the whole arrays (the brute-force reference)."""
    if space == "embedding":
        return _unit(np.asarray(index.embeddings["image"]) + np.asarray(index.embeddings["spectrum"]))
    store = index.open_store()
    raw = store.read(space.replace("-features", "_features"), 0, store.n)[index.rows["row"]]
    mean, scale = index.space(space).stats()
    return _unit((raw - mean) / scale)


def test_topn_keeps_the_best_of_every_block_and_breaks_ties_by_position():
    rng = np.random.default_rng(0)
    for scores in (rng.normal(size=1000), rng.integers(0, 5, 1000).astype(float)):  # the second: ties everywhere
        want = np.lexsort((np.arange(1000), -scores))[:17]
        for block in (7, 64, 1000):
            top = TopN(17)
            for lo in range(0, 1000, block):
                top.add(scores[lo : lo + block], np.arange(lo, min(lo + block, 1000)))
            np.testing.assert_array_equal(top.result()[0], want)


def test_the_scorer_is_the_regularised_logistic_optimum():
    """At the fitted (w, b) the gradient of the weighted logistic loss plus |w|^2 / 2C vanishes (numpy)."""
    from galclip.discover.rank import C, fit_scorer

    rng = np.random.default_rng(1)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    pos, neg, bg = unit(rng.normal(1, 1, (5, 16))), unit(rng.normal(-1, 1, (3, 16))), unit(rng.normal(0, 1, (200, 16)))
    scorer = fit_scorer(pos, neg, bg)
    x = np.concatenate([pos, neg, bg])
    y = np.r_[np.ones(5), np.zeros(203)]
    weight = np.r_[np.full(5, 1 / 5), np.full(3, 0.5 / 3), np.full(200, 0.5 / 200)]
    weight *= len(x) / weight.sum()

    def gradient(w: np.ndarray, b: float) -> np.ndarray:
        p = 1 / (1 + np.exp(-(x @ w + b)))
        return np.r_[x.T @ (weight * (p - y)) + w / C, np.sum(weight * (p - y))]

    at_start = np.abs(gradient(np.zeros(16), 0.0)).max()
    assert np.abs(gradient(scorer.w, scorer.b)).max() < 1e-3 * at_start  # lbfgs stops within its tolerance
    one = fit_scorer(pos[:1], neg[:0], bg)
    np.testing.assert_allclose(one(bg), bg @ pos[0], rtol=1e-5)  # one positive: its cosine similarity


@pytest.mark.parametrize("space", ["embedding", "image-features", "spectrum-features"])
def test_one_positive_ranks_by_cosine_similarity_as_numpy_does(discover_index, space):
    index = open_index(discover_index)
    tid = index.rows["targetid"]
    x = _dense(index, space)
    got = rank(index.space(space), Marks(positive=(int(tid[4]),)), n=10, block=7)  # 7: many blocks merged
    sims = x @ x[4]
    sims[4] = -np.inf
    np.testing.assert_array_equal(got.positions, np.argsort(-sims, kind="stable")[:10])
    np.testing.assert_allclose(got.scores, np.sort(sims)[::-1][:10], rtol=1e-5)


def test_logistic_ranking_streams_leaves_marks_out_and_is_seeded(discover_index):
    index = open_index(discover_index)
    tid = [int(t) for t in index.rows["targetid"]]
    marks = Marks(positive=(tid[1], tid[2], tid[3]), negative=(tid[9],))
    whole = rank(index.space("image-features"), marks, n=20)
    streamed = rank(index.space("image-features"), marks, n=20, block=5)
    np.testing.assert_array_equal(whole.positions, streamed.positions)
    np.testing.assert_allclose(whole.scores, streamed.scores, atol=1e-6)  # float32 sums by block
    assert not set(whole.positions) & {1, 2, 3, 9}
    assert "3 positives" in whole.scorer and "1 marked negatives" in whole.scorer
    assert np.all(np.diff(whole.scores) <= 0)
    # the ranking is the fitted scorer's order over every unmarked galaxy (numpy over the dense vectors)
    dense = whole.scorer_model(_dense(index, "image-features")).astype(np.float64)
    dense[[1, 2, 3, 9]] = -np.inf
    np.testing.assert_array_equal(whole.positions, np.argsort(-dense, kind="stable")[:20])
    # the best candidates lie nearer the positives than the galaxies ranked last do
    x = _dense(index, "image-features")
    centre = x[[1, 2, 3]].mean(0)
    everyone = rank(index.space("image-features"), marks, n=len(tid) - 4)
    assert (x[everyone.positions[:10]] @ centre).mean() > (x[everyone.positions[-10:]] @ centre).mean()


def test_anomaly_scores_match_numpy_brute_force(discover_index):
    index = open_index(discover_index)
    x = _dense(index, "embedding")
    got = anomalies(index.space("embedding"), n=8, k=5, sample=10_000, block=9)  # the sample holds every galaxy
    dist = 1 - x @ x.T
    np.fill_diagonal(dist, np.inf)
    want = np.sort(dist, axis=1)[:, :5].mean(1)
    np.testing.assert_array_equal(got.positions, np.argsort(-want, kind="stable")[:8])
    np.testing.assert_allclose(got.scores, np.sort(want)[::-1][:8], rtol=1e-4)


def test_anomalies_among_a_sample_match_numpy(discover_index):
    """With a sample smaller than the index, a galaxy in the sample is not its own neighbour; one outside is not
    in it at all."""
    index = open_index(discover_index)
    x = _dense(index, "embedding")
    got = anomalies(index.space("embedding"), n=10, k=4, sample=30, seed=3)
    ref = np.sort(np.random.default_rng([3, 29]).choice(len(x), 30, replace=False))
    dist = 1 - x @ x[ref].T
    dist[ref, np.arange(30)] = np.inf
    want = np.sort(dist, axis=1)[:, :4].mean(1)
    np.testing.assert_array_equal(got.positions, np.lexsort((np.arange(len(x)), -want))[:10])
    for k, sample, message in [(0, 30, "-k 0"), (30, 30, "between 1 and 29"), (3, 1, "--sample 1")]:
        with pytest.raises(GalclipError, match=message):
            anomalies(index.space("embedding"), n=5, k=k, sample=sample)


def test_cli_help_states_the_library_defaults():
    from galclip.discover.rank import ANOMALY_K, ANOMALY_SAMPLE

    text = CliRunner().invoke(main, ["anomalies", "--help"]).output
    assert f"[default: {ANOMALY_K}]" in text and f"[default: {ANOMALY_SAMPLE}]" in text


def test_marks_files_round_trip_and_foreign_files_are_refused(tmp_path):
    marks = Marks(positive=(39627000000000012, 39627000000000013), negative=(39627000000000099,))
    assert marks_from_text(marks_json(marks, "index"), "m.json") == marks
    assert marks_from_text(marks_csv(marks), "m.csv") == marks
    assert marks_from_text("# mine\n39627000000000012\n\n39627000000000013\n", "ids.txt") == marks.positive
    (tmp_path / "ids.txt").write_text("39627000000000012\n")
    assert ids_argument(str(tmp_path / "ids.txt"), "--negative") == Marks(negative=(39627000000000012,))
    assert ids_argument("5, 6,5", "--positive") == Marks(positive=(5, 6))
    for text, match in [
        ('{"positive": [1]}', "not a galclip marks file"),
        ("{oops", "not valid JSON"),
        ("targetid,mark\n12,maybe\n", "line 2"),
        ("ra,dec\n1,2\n", "is not a targetid"),
        ("", "holds no targetid"),
        ("\u00b2\n", "is not a targetid"),
        ("1" * 5000, "is not a targetid"),
        ("99999999999999999999\n", "is not a targetid"),
    ]:
        with pytest.raises(GalclipError, match=match):
            marks_from_text(text, "f")
    with pytest.raises(GalclipError, match="marked both positive and negative"):
        Marks(positive=(1, 2), negative=(2,)).check()
    with pytest.raises(GalclipError, match="no such file"):
        ids_argument("marks.jsn", "--positive")


def test_rank_and_anomalies_cli_write_catalogues_astropy_reads(discover_index, tmp_path):
    from astropy.table import Table

    index = open_index(discover_index)
    tid = [int(t) for t in index.rows["targetid"]]
    marks = tmp_path / "marks.json"
    marks.write_text(marks_json(Marks(positive=(tid[0], tid[1]), negative=(tid[2],)), "index"))
    out = tmp_path / "more.fits"
    args = ["-q", "rank", str(discover_index), str(out), "--positive", str(marks), "-n", "12", "--no-progress"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    table = Table.read(out)
    assert list(table["RANK"]) == list(range(1, 13)) and not set(table["TARGETID"]) & {tid[0], tid[1], tid[2]}
    assert table.colnames[:5] == ["TARGETID", "RA", "DEC", "RANK", "SCORE"] and "Z_PRED" in table.colnames
    assert bool(table["HAS_IMAGE"].all()) and bool(table["HAS_SPECTRUM"].all())
    assert CliRunner().invoke(main, ["-q", "check", str(out)]).exit_code == 0
    metrics = json.loads((tmp_path / "more_report" / "metrics.json").read_text())
    assert metrics["positive"] == [str(tid[0]), str(tid[1])] and metrics["n"] == 12
    # the API gives the CLI's records
    api = index.rank([tid[0], tid[1]], [tid[2]], n=12)
    assert [c["targetid"] for c in api["candidates"]] == list(table["TARGETID"])
    js = CliRunner().invoke(main, [*args[:3], str(tmp_path / "more.csv"), *args[4:], "--json"])
    assert json.loads(js.output)["candidates"] == json.loads(json.dumps(api["candidates"]))
    res = CliRunner().invoke(
        main, ["-q", "anomalies", str(discover_index), str(tmp_path / "odd.csv"), "-n", "5", "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    import csv

    rows = list(csv.DictReader(open(tmp_path / "odd.csv")))
    assert [r["RANK"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [int(r["TARGETID"]) for r in rows] == [c["targetid"] for c in index.anomalies(n=5)["candidates"]]


def test_rank_refuses_bad_input_in_one_line(discover_index, tmp_path):
    index = open_index(discover_index)
    tid = [str(int(t)) for t in index.rows["targetid"]]
    idx, out = str(discover_index), str(tmp_path / "c.fits")
    (tmp_path / "notes.csv").write_text("ra,dec\n1,2\n")
    (tmp_path / "c.csv").write_text("my own table\n")
    cases = [
        (["--positive", "123"], "positive targetid 123 is not in the index"),
        (["--positive", f"{tid[0]},{tid[1]}", "--negative", tid[1]], "marked both positive and negative"),
        (["--positive", tid[0], "-n", "0"], "-n 0: ask for at least 1"),
        (["--positive", tid[0], "-n", "64"], "ask for -n 63 or fewer"),
        (["--positive", str(tmp_path / "notes.csv")], "is not a targetid"),
        (["--positive", tid[0], "--space", "radio"], "Invalid value for '--space'"),
    ]
    for extra, message in cases:
        res = CliRunner().invoke(main, ["-q", "rank", idx, out, *extra])
        assert res.exit_code != 0 and message in res.output, (extra, res.output)
        errors = [line for line in res.output.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and "Traceback" not in res.output, res.output  # one line (after click's usage)
    res = CliRunner().invoke(main, ["-q", "rank", idx, str(tmp_path / "c.csv"), "--positive", tid[0]])
    assert res.exit_code == 1 and "not a galclip catalogue" in res.output
    assert (tmp_path / "c.csv").read_text() == "my own table\n" and not (tmp_path / "c.fits").exists()
    res = CliRunner().invoke(main, ["-q", "anomalies", idx, out, "-n", "65"])
    assert res.exit_code == 1 and "ask for -n 64 or fewer" in res.output
    # a space the index's stores do not hold
    index.sidecar["stores"] = [{**index.store_records()[0], "modalities": ["image"]}]
    with pytest.raises(GalclipError, match="hold no spectrum features; choose one of"):
        index.rank([int(tid[0])], space="spectrum-features")
