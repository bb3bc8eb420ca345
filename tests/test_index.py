"""The index package: FAISS indexes over the whole store, search records, embedding, against numpy brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest

from galclip.index.build import build_indexes, exact_neighbours, index_recall, tune_nprobe
from galclip.index.search import open_index as load_index
from galclip.index.vectors import choose_spec, new_index


def test_exact_index_matches_brute_force(tiny_store, tiny_heads, tmp_path):
    side = build_indexes(tiny_store, tiny_heads, tmp_path / "idx")
    assert side["indexes"]["image"]["kind"] == "flat" and side["n"] == 64
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["store_fingerprint"] == side["store_fingerprint"]
    idx = load_index(tmp_path / "idx")
    emb_i, emb_s = idx.embeddings["image"], idx.embeddings["spectrum"]
    np.testing.assert_allclose(np.linalg.norm(emb_i, axis=1), 1, rtol=1e-5)
    sims, ids = idx.nearest(emb_i[:8], "spectrum", 5)
    ref = emb_i[:8] @ emb_s.T
    np.testing.assert_array_equal(ids, np.argsort(-ref, axis=1)[:, :5])
    np.testing.assert_allclose(sims, np.sort(ref, axis=1)[:, ::-1][:, :5], rtol=1e-5, atol=1e-6)
    assert idx.position(int(idx.rows["targetid"][7])) == 7
    ivf = build_indexes(tiny_store, tiny_heads, tmp_path / "ivf", exact_max=10, recall_floor=0.9, n_queries=20)
    assert ivf["indexes"]["spectrum"]["kind"] == "ivf" and ivf["indexes"]["spectrum"]["recall@10"] >= 0.9
    sims_ivf, ids_ivf = load_index(tmp_path / "ivf").nearest(emb_i[:8], "spectrum", 5)
    np.testing.assert_array_equal(ids_ivf, ids)  # one list probed in full: exact


def test_spec_by_size():
    assert choose_spec(1000, 250_000).kind == "flat"
    spec = choose_spec(1_000_000, 250_000)
    assert spec.kind == "ivf" and spec.nlist == 4000
    assert choose_spec(10_000_000, 250_000).nlist == 4096


def test_ivf_recall_is_measured_and_tuned():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 32))
    x = (centres[rng.integers(0, 50, 6000)] + 0.3 * rng.normal(size=(6000, 32))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = new_index(choose_spec(len(x), 1000), 32)
    index.train(x)
    index.add(x)
    q = x[rng.choice(len(x), 200, replace=False)]
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10]  # numpy brute force
    np.testing.assert_array_equal(exact_neighbours(x, q)[:, :3], truth[:, :3])
    nprobe, recall = tune_nprobe(index, truth, q, floor=0.9)
    assert recall >= 0.9 and index.nprobe == nprobe and nprobe < index.nlist
    # the recall it reports is the share of the brute-force top 10 it finds
    _, got = index.search(q, 10)
    assert recall == pytest.approx(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got)]))
    assert index_recall(index, truth, q) == pytest.approx(recall)
    with pytest.raises(Exception, match="floor"):
        tune_nprobe(index, truth[:, ::-1][:, :10] * 0 + len(x) + 1, q, floor=0.5)  # unreachable truth


def test_search_cli_json_and_plot(tiny_store, tiny_heads, tmp_path):
    from click.testing import CliRunner

    from galclip.cli import main

    runner = CliRunner()
    r = runner.invoke(main, ["-q", "index", str(tiny_store), str(tiny_heads), str(tmp_path / "idx")])
    assert r.exit_code == 0, r.output
    tid = int(load_index(tmp_path / "idx").rows["targetid"][3])
    r = runner.invoke(
        main,
        [
            "-q",
            "search",
            str(tmp_path / "idx"),
            "--targetid",
            str(tid),
            "--query",
            "image",
            "--target",
            "image",
            "-k",
            "4",
            "--json",
            "--plot",
            str(tmp_path / "q.png"),
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert len(out["neighbours"]) == 4 and tid not in [
        n["targetid"] for n in out["neighbours"]
    ]  # in-modal: self excluded
    assert (tmp_path / "q.png").stat().st_size > 1000
    r = runner.invoke(main, ["search", str(tmp_path / "idx"), "--targetid", "12345"])
    assert r.exit_code == 1 and "not in the index" in r.output


def test_search_embeds_a_pair_from_a_data_file(tiny_mock, tiny_store, tiny_heads, tmp_path):
    import shutil

    import torch
    from click.testing import CliRunner

    from galclip.cli import main
    from galclip.embed_survey import embed_survey_pair, search_survey_pair
    from galclip.errors import GalclipError

    heads = tmp_path / "heads"
    shutil.copytree(tiny_heads, heads)
    build_indexes(tiny_store, heads, tmp_path / "idx")
    idx = load_index(tmp_path / "idx")
    tid = int(idx.rows["targetid"][11])
    emb, survey_z, _ = embed_survey_pair(idx, tiny_mock / "survey.h5", tid, device="cpu")
    # the same pair embedded on the fly lands where the index holds it
    np.testing.assert_allclose(emb["image"][0], idx.embeddings["image"][11], atol=1e-4)
    np.testing.assert_allclose(emb["spectrum"][0], idx.embeddings["spectrum"][11], atol=1e-4)
    r = CliRunner().invoke(
        main,
        [
            "-q",
            "search",
            str(tmp_path / "idx"),
            "--data",
            str(tiny_mock / "survey.h5"),
            "--targetid",
            str(tid),
            "--query",
            "spectrum",
            "--target",
            "image",
            "-k",
            "3",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    query = json.loads(r.output)["query"]
    assert query["source"].endswith("survey.h5")
    # a galaxy the index does not hold: its redshift comes from the survey file (it used to be null)
    no_11 = dict(idx.rows)
    no_11["targetid"] = np.where(np.arange(len(idx)) == 11, -1, idx.rows["targetid"])
    idx.rows = no_11
    record = search_survey_pair(idx, tiny_mock / "survey.h5", tid, query="image", target="spectrum", k=3, device="cpu")
    assert record["query"]["redshift"] == pytest.approx(survey_z) and record["query"]["log_mstar"] is None
    assert not any(n["is_partner"] for n in record["neighbours"])
    ckpt = torch.load(heads / "heads.pt", weights_only=True)
    ckpt["best_epoch"] = -5
    torch.save(ckpt, heads / "heads.pt")  # the heads changed after the index was built
    with pytest.raises(GalclipError, match="other heads"):
        embed_survey_pair(idx, tiny_mock / "survey.h5", tid, device="cpu")


def test_streamed_exact_neighbours_match_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1000, 16)).astype(np.float32)
    q = rng.normal(size=(30, 16)).astype(np.float32)
    truth = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :11]
    from galclip.index.build import exact_neighbours_streamed

    np.testing.assert_array_equal(exact_neighbours_streamed(x, q, 11, block=97), truth)  # blocks smaller than k too
    np.testing.assert_array_equal(exact_neighbours_streamed(x, q, 11, block=7), truth)


def test_index_build_streams_in_blocks(tiny_store, tiny_heads, tmp_path, monkeypatch):
    from galclip.heads.models import CLIPHeads
    from galclip.store import FeatureStore

    ref = build_indexes(tiny_store, tiny_heads, tmp_path / "ref", exact_max=10, recall_floor=0.9, n_queries=20)
    seen = []
    embed = CLIPHeads.embed_modality

    def spy(self, modality, features, *args):
        seen.append(len(features))
        return embed(self, modality, features, *args)

    def no_full_load(*a, **k):
        raise AssertionError("the index build must not load the whole store")

    monkeypatch.setattr(CLIPHeads, "embed_modality", spy)
    monkeypatch.setattr(FeatureStore, "load", no_full_load)
    side = build_indexes(
        tiny_store, tiny_heads, tmp_path / "idx", exact_max=10, recall_floor=0.9, n_queries=20, batch=10
    )
    assert max(seen) <= 10 and sum(seen) == 2 * 64  # 7 blocks of at most 10 rows, per modality
    a, b = load_index(tmp_path / "ref"), load_index(tmp_path / "idx")
    assert isinstance(b.embeddings["image"], np.memmap) and b.embeddings["image"].shape == (64, 128)  # on disk
    for m in ("image", "spectrum"):  # the same embeddings up to BLAS blocking, and a tuned IVF index each
        np.testing.assert_allclose(a.embeddings[m], b.embeddings[m], atol=1e-6)
        assert side["indexes"][m]["kind"] == "ivf" and side["indexes"][m]["recall@10"] >= 0.9
        assert side["indexes"][m]["ntotal"] == ref["indexes"][m]["ntotal"] == 64


def test_failed_rebuild_keeps_previous_index(tiny_store, tiny_heads, tmp_path, monkeypatch):
    import galclip.index.build as index_module
    from galclip.errors import GalclipError

    build_indexes(tiny_store, tiny_heads, tmp_path / "idx")
    before = {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()}

    def crash(*a, **k):
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(index_module, "tune", crash)
    with pytest.raises(RuntimeError):
        build_indexes(tiny_store, tiny_heads, tmp_path / "idx", exact_max=10)
    assert {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no temporary folder left
    (tmp_path / "idx" / "my_plot.png").write_text("mine")  # a user's file in an index folder: kept by a rebuild
    build_indexes(tiny_store, tiny_heads, tmp_path / "idx")
    assert (tmp_path / "idx" / "my_plot.png").read_text() == "mine"
    assert {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir() if p.name != "index.json"} == {
        **{k: v for k, v in before.items() if k != "index.json"},
        "my_plot.png": b"mine",
    }
    load_index(tmp_path / "idx", verify_hashes=True)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(GalclipError, match="mine.txt, which 'galclip index' did not write.*--overwrite"):
        build_indexes(tiny_store, tiny_heads, tmp_path / "notes")
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["mine.txt"]
    build_indexes(tiny_store, tiny_heads, tmp_path / "notes", overwrite=True)  # written beside the user's file
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"
    load_index(tmp_path / "notes", verify_hashes=True)


def _clusters(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, d))
    x = (centres[rng.integers(0, 40, n)] + 0.35 * rng.normal(size=(n, d))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_budget_chooses_ivfpq_and_its_reranked_recall_meets_the_floor(tmp_path, monkeypatch):
    import galclip.index.vectors as vectors_module
    from galclip.index.vectors import (
        VectorFile,
        VectorIndex,
        candidates,
        new_index,
        resident_bytes,
        set_nprobe,
        training_sample,
        tune,
    )

    everything = _clusters(12200)
    x, held_out = everything[:12000], everything[12000:]  # queries from the same clusters, never indexed
    n, d = x.shape
    budget = n * d * 4 // 3  # a third of IVF-Flat: only PQ fits
    specs = candidates(n, d, exact_max=1000, budget=budget)
    assert specs and all(s.kind == "ivfpq" and resident_bytes(s, n, d) <= budget for s in specs)
    assert candidates(n, d, 1000, budget=100) == []
    spec = specs[0]
    index = new_index(spec, d)
    rng = np.random.default_rng(0)
    index.train(x[training_sample(spec, n, rng)])
    index.add(x)
    np.save(tmp_path / "x.npy", x)
    rows = VectorFile(tmp_path / "x.npy")
    np.testing.assert_array_equal(rows[np.array([5, 0, 5, 11999])], x[[5, 0, 5, 11999]])  # pread, any order
    many = rng.integers(0, n, 500)  # repeats, any order, read by several threads
    np.testing.assert_array_equal(rows[many], x[many])
    picks = np.sort(rng.choice(n, 300, replace=False))
    truth = np.argsort(-(x[picks] @ x.T), axis=1, kind="stable")[:, :11]  # numpy brute force, the query included
    tuned, recall = tune(VectorIndex(index, spec, x), truth, x[picks], 0.9, self_ids=picks)
    assert recall >= 0.91 and tuned.shortlist > 0 and tuned.nprobe >= 1
    set_nprobe(index, tuned.nprobe)
    searcher = VectorIndex(index, tuned, rows)
    exact = np.argsort(-(held_out @ x.T), axis=1, kind="stable")[:, :10]
    sims, got = searcher.search(held_out, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, got)]) >= 0.85
    np.testing.assert_allclose(sims, np.take_along_axis(held_out @ x.T, got, 1), rtol=1e-5)  # re-ranked exactly
    # a filter is applied before the top k is cut: few kept -> exact over them; many -> FAISS's id selector
    allowed = np.zeros(n, bool)
    allowed[::7] = True
    kept = np.flatnonzero(allowed)
    want = kept[np.argsort(-(held_out @ x[kept].T), axis=1, kind="stable")[:, :10]]
    np.testing.assert_array_equal(searcher.search(held_out, 10, allowed=allowed)[1], want)
    monkeypatch.setattr(vectors_module, "EXACT_SUBSET", 0)
    _, through_selector = searcher.search(held_out, 10, allowed=allowed)
    assert allowed[through_selector[through_selector >= 0]].all()
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(want, through_selector)]) >= 0.85
    nothing = np.zeros(n, bool)
    assert (searcher.search(held_out[:2], 5, allowed=nothing)[1] == -1).all()


def test_a_budget_no_kind_meets_is_refused_naming_the_closest(tiny_store, tiny_heads, tmp_path):
    from galclip.errors import GalclipError

    with pytest.raises(GalclipError, match=r"--max-memory .* no index kind fits; the closest, IVF-PQ"):
        build_indexes(tiny_store, tiny_heads, tmp_path / "idx", max_memory=2**20)
    assert not (tmp_path / "idx").exists()
    side = build_indexes(tiny_store, tiny_heads, tmp_path / "idx", max_memory=2**30)
    assert side["max_memory"] == 2**30 and side["indexes"]["image"]["kind"] == "flat"
    assert side["resident_bytes"] == sum(r["resident_bytes"] for r in side["indexes"].values())


def test_position_both_filters_and_dedup_against_brute_force(tiny_store, tiny_heads, tmp_path):
    from galclip.errors import GalclipError
    from galclip.index.query import Filters, dedupe, separation_arcsec
    from galclip.index.search import NotIndexed

    build_indexes(tiny_store, tiny_heads, tmp_path / "idx")
    idx = load_index(tmp_path / "idx")
    ra, dec, tid = idx.rows["ra"], idx.rows["dec"], idx.rows["targetid"]
    # by position: snaps to the galaxy there, and names the nearest when none is within the radius
    hit = idx.search_position(float(ra[9]) + 0.1 / 3600, float(dec[9]), radius_arcsec=1.0, k=3)
    assert hit["query"]["targetid"] == int(tid[9])
    assert hit["query"]["position"]["separation_arcsec"] == pytest.approx(
        float(separation_arcsec(ra[9] + 0.1 / 3600, dec[9], ra[9], dec[9])), abs=1e-6
    )
    sep = separation_arcsec(float(ra[9]) + 0.05, float(dec[9]), ra, dec)
    with pytest.raises(NotIndexed, match=rf"the nearest is targetid {int(tid[np.argmin(sep)])} at {sep.min():.2f}"):
        idx.search_position(float(ra[9]) + 0.05, float(dec[9]), radius_arcsec=1.0)
    for bad in ((361.0, 0.0), (10.0, 91.0), (float("nan"), 0.0)):
        with pytest.raises(GalclipError, match="degrees"):
            idx.search_position(*bad)
    # both modalities: the renormalised mean of the two unit vectors, searched exactly
    both = idx.embeddings["image"][9] + idx.embeddings["spectrum"][9]
    both /= np.linalg.norm(both)
    order = [int(i) for i in np.argsort(-(idx.embeddings["image"] @ both), kind="stable") if i != 9][:5]
    got = idx.search(int(tid[9]), query="both", target="image", k=5, dedup_arcsec=0)
    assert [n["targetid"] for n in got["neighbours"]] == [int(tid[i]) for i in order]
    # a redshift window before the top k is cut: the k best that pass
    z = idx.rows["redshift"]
    lo, hi = np.nanpercentile(z, [30, 70])
    window = Filters.parse([f"redshift={lo}:{hi}"])
    got = idx.search(int(tid[9]), target="spectrum", k=6, filters=window, dedup_arcsec=0)
    passing = np.flatnonzero((z >= lo) & (z <= hi))
    sims = idx.embeddings["spectrum"][passing] @ idx.embeddings["image"][9]
    want = passing[np.argsort(-sims, kind="stable")][:6]
    assert [n["targetid"] for n in got["neighbours"]] == [int(tid[i]) for i in want]
    assert got["filters"]["passing"] == len(passing) and got["filters"]["reason"] is None
    empty = idx.search(int(tid[9]), k=6, filters=Filters.parse(["redshift=5:6"]))
    assert empty["neighbours"] == [] and "no indexed galaxy passes" in empty["filters"]["reason"]
    with pytest.raises(GalclipError, match="no such label"):
        idx.search(int(tid[9]), filters=Filters.parse(["colour=0:1"]))
    # duplicates on the sky: a loop over the ranked results against a brute-force pairwise check
    ranked = np.arange(len(idx))
    radius = float(np.percentile(separation_arcsec(ra[:, None], dec[:, None], ra[None], dec[None]), 5))
    keep = dedupe(ranked, ra, dec, radius)
    kept = []
    for j in ranked:
        if all(separation_arcsec(ra[j], dec[j], ra[i], dec[i]) >= radius for i in kept):
            kept.append(j)
    assert list(np.flatnonzero(keep)) == kept and 0 < len(kept) < len(idx)
    deduped = idx.search(int(tid[9]), target="image", k=10, dedup_arcsec=radius)
    positions = [idx.find(n["targetid"]) for n in deduped["neighbours"]] + [9]
    for a in positions:
        for b in positions:
            if a != b:
                assert separation_arcsec(ra[a], dec[a], ra[b], dec[b]) >= radius
