"""Heads: architecture, InfoNCE against a loop implementation of eq. 1, the one trainer (heads and sweep),
checkpoints."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from galclip.config import HeadConfig
from galclip.errors import GalclipError
from galclip.heads.checkpoint import load_heads
from galclip.heads.loss import info_nce
from galclip.heads.models import CLIPHeads
from galclip.heads.train import train_heads
from galclip.store import FeatureStore


def _info_nce_loop(zx: np.ndarray, zy: np.ndarray, tau: float) -> float:
    """Eq. 1 term by term, both directions averaged; cosine similarity from eq. 2 with norms."""
    k = len(zx)

    def cos(a, b):
        return float(a @ b) / (math.sqrt(float(a @ a)) * math.sqrt(float(b @ b)))

    def one_way(a, b):
        total = 0.0
        for i in range(k):
            num = math.exp(cos(a[i], b[i]) / tau)
            den = sum(math.exp(cos(a[i], b[j]) / tau) for j in range(k))
            total += math.log(num / den)
        return -total / k

    return 0.5 * (one_way(zx, zy) + one_way(zy, zx))


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_info_nce_matches_loop_reference(tau):
    rng = np.random.default_rng(0)
    zx, zy = rng.normal(size=(12, 8)), rng.normal(size=(12, 8))
    got = float(info_nce(torch.tensor(zx), torch.tensor(zy), tau))
    assert got == pytest.approx(_info_nce_loop(zx, zy, tau), rel=1e-10)


def test_info_nce_rewards_alignment():
    z = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
    assert float(info_nce(z, z, 0.07)) < 0.01 < float(info_nce(z, torch.roll(z, 1, 0), 0.07))


def test_head_architectures():
    heads = CLIPHeads()
    linear = [m for m in heads.image.proj if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(2048, 2048), (2048, 128)]
    assert sum(p.numel() for p in heads.image.proj.parameters()) == 2048 * 2048 + 2048 + 2048 * 128 + 128  # ~4.5M
    linear = [m for m in heads.spectrum.proj if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(256, 256), (256, 128), (128, 128), (128, 128)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in heads.spectrum.proj) == 3
    # the Stein MLP, loaded after the standardisation is fitted, still computes the pretrained projection
    g = torch.Generator().manual_seed(0)
    pretrained = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 128))
    x = torch.randn(32, 2048, generator=g) * 3 + 5
    heads.image.norm.fit(x.numpy())
    heads.load_moco_fc({k: v for k, v in pretrained.state_dict().items()})
    with torch.no_grad():
        torch.testing.assert_close(heads.image(x), pretrained(x), rtol=1e-4, atol=1e-4)


def test_training_is_seeded_and_learns(tiny_store, tmp_path):
    cfg = HeadConfig(epochs=6, batch_size=16, lr=1e-3, early_stopping=None)
    a = train_heads(tiny_store, tmp_path / "a", cfg, progress=False)
    train_heads(tiny_store, tmp_path / "b", cfg, progress=False)
    ha = torch.load(tmp_path / "a" / "heads.pt", weights_only=True)["history"]
    hb = torch.load(tmp_path / "b" / "heads.pt", weights_only=True)["history"]
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb]
    assert ha[-1]["train_loss"] < ha[0]["train_loss"]
    assert a["best_val_loss"] == min(h["val_loss"] for h in ha)
    heads, ckpt = load_heads(tmp_path / "a", FeatureStore.open(tiny_store))
    n_test = int((FeatureStore.open(tiny_store).split() == 1).sum())  # "val" is the selection split; test is apart
    assert ckpt["config"]["batch_size"] == 16 and ckpt["n_train"] + ckpt["n_val"] + n_test == 64 and n_test > 0
    # the file everyone reads holds the weights and little else, and loads with weights_only=True
    n_bytes = sum(t.numel() * t.element_size() for t in heads.state_dict().values())
    assert (tmp_path / "a" / "heads.pt").stat().st_size < 1.02 * n_bytes + 100_000
    assert torch.load(tmp_path / "a" / "heads.pt", weights_only=True)["format"] == "galclip-heads/2"


def test_lr_schedule_is_reduce_on_plateau(tiny_store, tmp_path):
    cfg = HeadConfig(epochs=8, batch_size=16, lr=1e-2, lr_patience=0, early_stopping=None)
    train_heads(tiny_store, tmp_path / "h", cfg, progress=False)
    hist = torch.load(tmp_path / "h" / "heads.pt", weights_only=True)["history"]
    best = math.inf
    lr = 1e-2
    for h in hist:  # patience 0: every epoch that does not improve halves the rate
        if h["val_loss"] < best:
            best = h["val_loss"]
        else:
            lr *= 0.5
        assert h["lr"] == pytest.approx(lr)


def test_heads_refuse_another_store(tiny_store, tmp_path):
    train_heads(tiny_store, tmp_path / "h", HeadConfig(epochs=1, batch_size=16), progress=False)
    from galclip.errors import DamagedDataError
    from galclip.heads.checkpoint import save_heads

    ckpt = torch.load(tmp_path / "h" / "heads.pt", weights_only=True)
    ckpt["store_fingerprint"] = "0123456789abcdef"
    torch.save(ckpt, tmp_path / "h" / "heads.pt")  # edited without its hash: that is damage
    with pytest.raises(DamagedDataError, match="do not match their SHA-256"):
        load_heads(tmp_path / "h", FeatureStore.open(tiny_store))
    ckpt.pop("content_sha256")
    save_heads(ckpt, tmp_path / "h" / "heads.pt")  # intact heads of another store
    with pytest.raises(GalclipError, match="fingerprint 0123456789abcdef"):
        load_heads(tmp_path / "h", FeatureStore.open(tiny_store))


def test_resume_continues_exactly(sharded_store, tmp_path):
    cfg = HeadConfig(epochs=5, batch_size=16, lr=1e-3, early_stopping=None, aug_prob=0.5)
    full = train_heads(sharded_store, tmp_path / "full", cfg, progress=False)
    part = train_heads(sharded_store, tmp_path / "cut", cfg, progress=False, stop_after=2)
    assert part["finished"] is False and part["epochs_run"] == 2
    with pytest.raises(GalclipError, match="lr was 0.001, now 0.01"):
        train_heads(
            sharded_store, tmp_path / "cut", HeadConfig(**{**cfg.__dict__, "lr": 1e-2}), progress=False, resume=True
        )
    resumed = train_heads(sharded_store, tmp_path / "cut", cfg, progress=False, resume=True)
    _assert_same_run(tmp_path / "full", tmp_path / "cut")
    assert full["best_epoch"] == resumed["best_epoch"]
    again = train_heads(sharded_store, tmp_path / "cut", cfg, progress=False, resume=True)  # finished: nothing to do
    assert again["epochs_run"] == 5 and again["finished"]


def _assert_same_run(a_dir, b_dir) -> None:
    """Two heads folders hold bitwise the same selected heads, last weights and history."""
    a = torch.load(a_dir / "heads.pt", weights_only=True)
    b = torch.load(b_dir / "heads.pt", weights_only=True)
    assert [h["val_loss"] for h in a["history"]] == [h["val_loss"] for h in b["history"]]
    for name in a["state_dict"]:
        assert torch.equal(a["state_dict"][name], b["state_dict"][name]), name
    sa = torch.load(a_dir / "train_state.pt", weights_only=True)
    sb = torch.load(b_dir / "train_state.pt", weights_only=True)
    assert sa["finished"] and sb["finished"] and sa["epoch"] == sb["epoch"]
    for name, value in sa["runs"][0]["last_state_dict"].items():
        assert torch.equal(value, sb["runs"][0]["last_state_dict"][name]), name


def test_old_heads_checkpoint_is_read_and_its_run_refused_for_resume(tiny_store, tmp_path):
    """A galclip 0.1 heads.pt (weights, optimiser and history in one file) still loads; --resume says why not."""
    train_heads(tiny_store, tmp_path / "h", HeadConfig(epochs=1, batch_size=16), progress=False)
    new = torch.load(tmp_path / "h" / "heads.pt", weights_only=True)
    state = torch.load(tmp_path / "h" / "train_state.pt", weights_only=True)
    old = {
        "format": "galclip-heads/1",
        "config": new["config"],
        "store_fingerprint": new["store_fingerprint"],
        "store_path": new["store_path"],
        "state_dict": new["state_dict"],
        "best_epoch": 0,
        "epoch": 0,
        "last_state_dict": state["runs"][0]["last_state_dict"],
        "optimizer": state["runs"][0]["optimizer"],
        "scheduler": state["runs"][0]["scheduler"],
        "generator": state["generator"],
        "history": new["history"],
        "finished": True,
        "stop_reason": "epochs",
        "n_train": new["n_train"],
        "n_val": new["n_val"],
    }
    (tmp_path / "old").mkdir()
    torch.save(old, tmp_path / "old" / "heads.pt")
    heads, record = load_heads(tmp_path / "old", FeatureStore.open(tiny_store))
    for name, value in heads.state_dict().items():
        assert torch.equal(value, new["state_dict"][name]), name
    with pytest.raises(GalclipError, match="galclip 0.1.*start without --resume"):
        train_heads(tiny_store, tmp_path / "old", HeadConfig(epochs=1, batch_size=16), progress=False, resume=True)
    with pytest.raises(GalclipError, match="is a training state"):
        load_heads(tmp_path / "h" / "train_state.pt")


def test_training_data_is_read_shard_by_shard_standardised_then_fp16(sharded_store):
    """Train and selection pairs, standardised in float32 with the train split's statistics *before* the cast to
    fp16: bit for bit what the heads' own Standardise layer (used at evaluation and indexing) gives, in fp16."""
    from galclip.heads.data import load_training_data
    from galclip.heads.models import Standardise, standardisation

    store = FeatureStore.open(sharded_store)
    data = load_training_data(store)
    full = store.load(features=("image_features", "spectrum_features", "image_features_aug"))
    train, selection, test = full["split"] == 0, full["split"] == 2, full["split"] == 1
    assert data.standardised and data.train.image.dtype == torch.float16
    assert data.train.image_aug.shape == (int(train.sum()), 1, 2048) and len(data.selection) == int(selection.sum())
    norm = {
        name: Standardise(full[key].shape[1]).set(*data.stats[name])
        for name, key in (("image", "image_features"), ("spectrum", "spectrum_features"))
    }
    as_evaluated = lambda name, x: norm[name](torch.from_numpy(x)).half().numpy()
    np.testing.assert_array_equal(data.train.image.numpy(), as_evaluated("image", full["image_features"][train]))
    np.testing.assert_array_equal(
        data.train.image_aug.numpy()[:, 0], as_evaluated("image", full["image_features_aug"][train][:, 0])
    )
    np.testing.assert_array_equal(
        data.selection.spectrum.numpy(), as_evaluated("spectrum", full["spectrum_features"][selection])
    )
    np.testing.assert_array_equal(data.test_rows, np.flatnonzero(store.require_complete() & (store.split() == 1)))
    np.testing.assert_array_equal(data.test_labels["redshift"], full["label_redshift"][test])
    # the standardisation merged over 4 shards equals the one computed over all train rows at once
    for name, key in (("image", "image_features"), ("spectrum", "spectrum_features")):
        for got, want in zip(data.stats[name], standardisation(full[key][train])):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    raw = load_training_data(store, with_aug=False, standardise=False)
    assert raw.train.image_aug is None and not raw.standardised
    np.testing.assert_array_equal(raw.train.image.numpy(), full["image_features"][train].astype(np.float16))


def test_fp16_after_standardising_is_closer_than_before():
    """A near-constant channel (std just above the floor) standardised after an fp16 cast is off by many σ;
    standardised first, it is within fp16's relative precision of the float32 value evaluation sees."""
    from galclip.heads.data import to_fp16

    rng = np.random.default_rng(0)
    x = (1000.0 + 1e-3 * rng.standard_normal((256, 4))).astype(np.float32)
    mean, std = x.astype(np.float64).mean(0), x.astype(np.float64).std(0)
    exact = ((x - mean.astype(np.float32)) / std.astype(np.float32)).astype(np.float64)
    after = to_fp16(x, (mean, std)).astype(np.float64)
    before = (x.astype(np.float16).astype(np.float32) - mean.astype(np.float32)) / std.astype(np.float32)
    assert np.max(np.abs(after - exact)) <= 2e-3 * np.max(np.abs(exact))
    assert np.corrcoef(after[:, 0], exact[:, 0])[0, 1] > 0.9999
    assert (np.ptp(before, axis=0) == 0).all() and np.max(np.abs(before - exact)) > 1  # cast first: all of it lost


def test_augmented_views_are_sampled(sharded_store, tmp_path):
    from galclip.heads.data import load_training_data

    data = load_training_data(FeatureStore.open(sharded_store), standardise=False)  # raw fp16, to compare with
    full = FeatureStore.open(sharded_store).load(features=("image_features", "image_features_aug"))
    train = np.flatnonzero(full["split"] == 0)
    idx = torch.tensor([3, 7])
    xi, _ = data.train.batch(idx, torch.tensor([True, False]), torch.tensor([0, 0]))
    np.testing.assert_array_equal(
        xi[0].numpy(), full["image_features_aug"][train[3], 0].astype(np.float16).astype(np.float32)
    )
    np.testing.assert_array_equal(xi[1].numpy(), full["image_features"][train[7]].astype(np.float16).astype(np.float32))
    base = HeadConfig(epochs=2, batch_size=16, early_stopping=None)
    clean = train_heads(
        sharded_store, tmp_path / "p0", HeadConfig(**{**base.__dict__, "aug_prob": 0.0}), progress=False
    )
    mixed = train_heads(
        sharded_store, tmp_path / "p1", HeadConfig(**{**base.__dict__, "aug_prob": 1.0}), progress=False
    )
    assert clean["augmented_views"] == 0 and mixed["augmented_views"] == 1
    assert clean["final_train_loss"] != mixed["final_train_loss"]


def test_learnable_tau_is_clamped(tiny_store, tmp_path):
    heads = CLIPHeads(tau=0.07, learn_tau=True, tau_min=0.01)
    assert isinstance(heads.log_inv_tau, torch.nn.Parameter)
    assert float(heads.tau().detach()) == pytest.approx(0.07)
    with torch.no_grad():
        heads.log_inv_tau.fill_(20.0)
    assert float(heads.tau().detach()) == pytest.approx(0.01)
    train_heads(
        tiny_store, tmp_path / "t", HeadConfig(epochs=2, batch_size=16, lr=1e-2, learn_tau=True), progress=False
    )
    hist = torch.load(tmp_path / "t" / "heads.pt", weights_only=True)["history"]
    assert hist[-1]["tau"] != pytest.approx(0.1) and hist[-1]["tau"] >= 0.01


def test_sweep_equals_separate_runs(sharded_store, tmp_path):
    import json

    from galclip.heads.sweep import parse_grid, run_sweep

    base = HeadConfig(epochs=3, batch_size=16, early_stopping=None, aug_prob=0.5)
    grid = parse_grid(["lr=1e-3,1e-4", "tau=0.07,0.2", "weight_decay=0,1e-3"])
    rows = run_sweep(sharded_store, tmp_path / "sweep", base, grid)
    assert len(rows) == 8 and (tmp_path / "sweep" / "sweep.csv").exists()
    histories = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["histories"]
    for i in (0, 3, 5):  # a few configurations, each against its own separate run
        row = rows[i]
        cfg = HeadConfig(**{**base.__dict__, "lr": row["lr"], "tau": row["tau"], "weight_decay": row["weight_decay"]})
        train_heads(sharded_store, tmp_path / f"sep{i}", cfg, progress=False)
        sep = torch.load(tmp_path / f"sep{i}" / "heads.pt", weights_only=True)["history"]
        for key in ("train_loss", "val_loss", "lr"):  # the same trainer: configuration k is exactly its own run
            assert [h[key] for h in histories[i]] == [h[key] for h in sep], key
    heads, _ = load_heads(tmp_path / "sweep" / "best", FeatureStore.open(sharded_store))
    assert isinstance(heads, CLIPHeads)


def _nan_from_call(monkeypatch, after: int, tau: float | None = None) -> None:
    """Make the trainer's InfoNCE return NaN from its ``after``-th call on (counting, and breaking, only the
    calls of the configuration with temperature ``tau`` when given)."""
    import galclip.heads.trainer as trainer_module

    real = info_nce
    calls = []

    def loss(zx, zy, t):
        out = real(zx, zy, t)
        if tau is not None and float(t) != pytest.approx(tau):
            return out
        calls.append(1)
        return out if len(calls) <= after else out * float("nan")  # NaN gradients too, as in a real divergence

    monkeypatch.setattr(trainer_module, "info_nce", loss)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_store, tmp_path, monkeypatch):
    import galclip.heads.trainer as trainer_module

    cfg = HeadConfig(epochs=10, batch_size=16, early_stopping=None)
    calls = []
    monkeypatch.setattr(trainer_module, "info_nce", lambda *a: calls.append(1) or info_nce(*a))
    train_heads(tiny_store, tmp_path / "count", dataclasses.replace(cfg, epochs=1), progress=False)
    per_epoch = len(calls)  # training steps + validation batches
    _nan_from_call(monkeypatch, after=3 * per_epoch)  # epochs 0-2 are good
    with pytest.raises(GalclipError, match="diverged at epoch 3.*still holds the checkpoint of the last good epoch"):
        train_heads(tiny_store, tmp_path / "h", cfg, progress=False)
    state = torch.load(tmp_path / "h" / "train_state.pt", weights_only=True)
    assert state["epoch"] == 2 and not state["finished"] and len(state["runs"][0]["history"]) == 3
    assert all(torch.isfinite(v).all() for v in state["runs"][0]["last_state_dict"].values())
    heads, record = load_heads(tmp_path / "h", FeatureStore.open(tiny_store))  # the best heads so far
    assert isinstance(heads, CLIPHeads) and not record["finished"] and record["best_epoch"] <= 2


def test_one_diverging_configuration_does_not_stop_the_sweep(sharded_store, tmp_path, monkeypatch):
    import json

    from galclip.heads.sweep import parse_grid, run_sweep

    base = HeadConfig(epochs=4, batch_size=16, early_stopping=None, aug_prob=0.0)
    grid = parse_grid(["tau=0.07,0.2"])
    import galclip.heads.trainer as trainer_module

    calls = []
    monkeypatch.setattr(trainer_module, "info_nce", lambda zx, zy, t: calls.append(float(t)) or info_nce(zx, zy, t))
    ref = run_sweep(sharded_store, tmp_path / "ref", base, grid, progress=False)
    ref_hist = json.loads((tmp_path / "ref" / "sweep.json").read_text())["histories"]
    per_epoch = sum(t == pytest.approx(0.07) for t in calls) // base.epochs  # training steps + validation batches
    _nan_from_call(monkeypatch, after=per_epoch, tau=0.07)  # τ 0.07 breaks in epoch 1
    rows = run_sweep(sharded_store, tmp_path / "sweep", base, grid, progress=False)
    hist = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["histories"]
    assert rows[0]["diverged_at_epoch"] == 1 and rows[0]["epochs_run"] == 1 and rows[1]["diverged_at_epoch"] is None
    assert [h["val_loss"] for h in hist[1]] == [h["val_loss"] for h in ref_hist[1]]  # the other one is untouched
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["best"] == 1  # a diverged one is never "best"
    assert ref[0]["diverged_at_epoch"] is None
    _nan_from_call(monkeypatch, after=0)
    with pytest.raises(GalclipError, match="all 2 configurations diverged"):
        run_sweep(sharded_store, tmp_path / "all", base, grid, progress=False)


@pytest.mark.slow
def test_kill_minus_9_during_training_then_resume_is_identical(sharded_store, tmp_path):
    """The CLI trains in a subprocess killed with SIGKILL three times at seeded moments; --resume then
    finishes with exactly the weights of an uninterrupted run (same seed, same threads)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    epochs = 24
    args = [
        "--epochs",
        str(epochs),
        "--batch-size",
        "16",
        "--early-stopping",
        "0",
        "--save-every",
        "0",
        "--no-progress",
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    state_path = tmp_path / "h" / "train_state.pt"
    rng = np.random.default_rng(7)
    kills = []
    for attempt in range(3):
        cmd = [sys.executable, "-m", "galclip", "-q", "heads", str(sharded_store), str(tmp_path / "h"), *args]
        proc = subprocess.Popen(
            cmd + (["--resume"] if attempt else []),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        target = (kills[-1] if kills else 0) + int(rng.integers(2, 6))  # kill once this epoch has been saved
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if state_path.exists():
                saved = torch.load(state_path, weights_only=True)["epoch"]  # atomic writes: never half a file
                if saved >= target:
                    time.sleep(float(rng.uniform(0, 0.3)))  # mid-epoch, at a seeded moment
                    break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills.append(torch.load(state_path, weights_only=True)["epoch"])
    assert kills[-1] < epochs - 1, "training finished before the last kill; raise epochs"
    done = subprocess.run(
        [sys.executable, "-m", "galclip", "-q", "heads", str(sharded_store), str(tmp_path / "h"), *args, "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ref = subprocess.run(
        [sys.executable, "-m", "galclip", "-q", "heads", str(sharded_store), str(tmp_path / "ref"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ref.returncode == 0, ref.stderr[-2000:]
    _assert_same_run(tmp_path / "h", tmp_path / "ref")
    assert torch.load(state_path, weights_only=True)["epoch"] == epochs - 1
    assert not [p for p in (tmp_path / "h").iterdir() if ".tmp" in p.name]  # no half-written file left
