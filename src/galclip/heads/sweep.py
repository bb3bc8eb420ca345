"""``galclip sweep``: a grid of head configurations, K > 1 of the one trainer.

Configurations with the same layer widths train together in one pass over the data (see
:mod:`galclip.heads.trainer`), so each reproduces its separate ``galclip heads`` run while the
batches are gathered once. Each is chosen by its InfoNCE on the selection split ("val" in the
column names) and scored by the report's zero-shot measure: cross-modal k-NN R² (spectrum
embeddings fitted, image embeddings queried) on the report's halves of the test split.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import logging
import math
import time
from pathlib import Path

import numpy as np

from galclip.atomic import atomic_path, write_json
from galclip.config import EvalConfig, HeadConfig
from galclip.errors import GalclipError
from galclip.heads.checkpoint import HEADS_FILE, heads_record, save_heads
from galclip.heads.data import load_training_data
from galclip.heads.train import stored_fc_state
from galclip.heads.trainer import TrainResult, train_configurations
from galclip.neighbours import embedding_sources, l2_normalise, zero_shot_shortfall, zero_shot_split, zero_shot_table
from galclip.outputs import check_output_dir, output_dir
from galclip.provenance import resolve_device
from galclip.split import split_fractions
from galclip.store import FeatureStore

logger = logging.getLogger(__name__)

SWEEP_NAMES = ("sweep.csv", "sweep.json", "sweep_val_loss.png", "best")
SWEEPABLE = {
    "lr": float,
    "tau": float,
    "weight_decay": float,
    "aug_prob": float,
    "image_hidden": int,
    "spectrum_hidden": lambda s: tuple(int(x) for x in s.split("x")),
}


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["lr=1e-4,3e-4", "tau=0.1"]`` -> {"lr": [1e-4, 3e-4], "tau": [0.1]} (spectrum_hidden as 256x128x128)."""
    grid: dict[str, list] = {}
    for item in items:
        name, _, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if name not in SWEEPABLE or not values:
            raise GalclipError(f"--grid {item!r}: use NAME=v1,v2,... with NAME one of {sorted(SWEEPABLE)}")
        if name in grid:
            given = [i for i in items if i.partition("=")[0].strip().replace("-", "_") == name]
            values_all = ",".join(i.partition("=")[2] for i in given)
            raise GalclipError(
                f"--grid {name} is given {len(given)} times ({', '.join(map(repr, given))}); give its "
                f"values once: --grid {name}={values_all}"
            )
        try:
            grid[name] = [SWEEPABLE[name](v.strip()) for v in values.split(",")]
        except ValueError as err:
            raise GalclipError(f"--grid {item!r}: {err}") from err
    return grid


def expand_grid(base: HeadConfig, grid: dict[str, list]) -> list[HeadConfig]:
    """Cartesian product of the grid as ``dataclasses.replace(base, ...)`` configurations."""
    names = list(grid)
    try:
        return [
            dataclasses.replace(base, **dict(zip(names, values)))
            for values in itertools.product(*(grid[n] for n in names))
        ]
    except ValueError as err:
        raise GalclipError(f"--grid: {err}") from err


def zero_shot_cross_r2(
    result: TrainResult,
    test_features: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    config: EvalConfig = EvalConfig(),
) -> dict[str, float]:
    """The report's cross-modal zero-shot R² of trained heads: {"redshift": r2, "log_mstar": r2}.

    The test pairs' stored features (``test_features``: image_features (b, 2048), spectrum_features
    (b, 256)) are embedded and split exactly as ``galclip evaluate`` does with ``config``."""
    zi, zs = result.heads.embed(test_features["image_features"], test_features["spectrum_features"])
    train, test = zero_shot_split(labels, config.knn_test_fraction, config.seed)
    cross = {"cross": embedding_sources(l2_normalise(zi), l2_normalise(zs), train, test)["cross"]}
    table = zero_shot_table(cross, {name: (y[train], y[test]) for name, y in labels.items()}, config.k)
    return {name: cell["r2"] for name, cell in table["cross"].items()}


def run_sweep(
    store_path: str | Path,
    out_dir: str | Path,
    base: HeadConfig,
    grid: dict[str, list],
    allow_partial: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> list[dict]:
    """Train every configuration of the grid, together per group of equal layer widths.

    Writes ``sweep.csv``, ``sweep.json``, ``sweep_val_loss.png`` and the best configuration's
    ``best/heads.pt`` (loadable by ``galclip evaluate``) into ``out_dir``; returns one row per config.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    configs = expand_grid(base, grid)
    check_output_dir(out, "sweep", SWEEP_NAMES, overwrite)
    device = resolve_device(base.device)
    store = FeatureStore.open(store_path)
    fingerprint = store.fingerprint()
    data = load_training_data(
        store, allow_partial, with_aug=any(c.aug_prob > 0 for c in configs), standardise=base.standardise
    )
    fc_state = stored_fc_state(store)
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(configs):  # trained together: the same widths, and whether augmented views are drawn
        groups.setdefault((cfg.image_sizes, cfg.spectrum_sizes, cfg.aug_prob > 0), []).append(i)
    by_index: dict[int, TrainResult] = {}
    for sizes, members in groups.items():
        logger.info("sweep: %d configuration(s) with widths %s, trained together", len(members), sizes[:2])
        trained, _ = train_configurations(
            [configs[i] for i in members], data, device, fingerprint, fc_state, progress=progress, desc="sweep"
        )
        by_index.update(zip(members, trained))
    results = [by_index[i] for i in range(len(configs))]  # in grid order
    elapsed = time.perf_counter() - t0
    if all(r.diverged is not None for r in results):
        raise GalclipError(
            f"sweep: all {len(results)} configurations diverged; nothing was written to {out}. "
            "Lower the learning rates or raise the temperatures of the grid"
        )

    with output_dir(out, "sweep", SWEEP_NAMES, overwrite=True):
        return _write_sweep(out, store, store_path, fingerprint, data, base, grid, results, elapsed)


def _write_sweep(
    out: Path,
    store: FeatureStore,
    store_path,
    fingerprint: str,
    data,
    base: HeadConfig,
    grid: dict,
    results: list[TrainResult],
    elapsed: float,
) -> list[dict]:
    """Score every configuration and write sweep.csv, sweep.json, sweep_val_loss.png and best/heads.pt."""
    shortfall = zero_shot_shortfall(data.test_labels, EvalConfig(), split_fractions(store.provenance)[0])
    if shortfall:  # the r2_cross columns are then n/a: say why once
        logger.warning("sweep: %s", shortfall["note"])
    test_features = store.read_rows(data.test_rows, ("image_features", "spectrum_features"))  # as evaluate reads them
    rows = []
    for r in results:
        row = {name: getattr(r.config, name) for name in SWEEPABLE}
        row["spectrum_hidden"] = "x".join(map(str, row["spectrum_hidden"]))
        r2 = (
            zero_shot_cross_r2(r, test_features, data.test_labels)
            if r.best_epoch >= 0
            else {"redshift": math.nan, "log_mstar": math.nan}
        )
        row.update(
            {
                "best_val_loss": r.best_val_loss,
                "final_val_loss": r.history[-1]["val_loss"] if r.history else math.nan,
                "best_epoch": r.best_epoch,
                "epochs_run": len(r.history),
                "r2_cross_redshift": r2["redshift"],
                "r2_cross_log_mstar": r2["log_mstar"],
                "diverged_at_epoch": r.diverged_at_epoch,
            }
        )
        rows.append({k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()})
    # lowest validation InfoNCE among configurations that did not diverge
    best_i = int(np.argmin([math.inf if r.diverged is not None else r.best_val_loss for r in results]))
    with atomic_path(out / "sweep.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_json(
        {
            "seconds": elapsed,
            "n_configs": len(rows),
            "best": best_i,
            "grid": grid,
            "base": dataclasses.asdict(base),
            "results": rows,
            "histories": [r.history for r in results],
        },
        out / "sweep.json",
    )
    from galclip.figures import plot_val_loss_curves

    plot_val_loss_curves(
        [
            (
                f"lr {r.config.lr:g} τ {r.config.tau:g} wd {r.config.weight_decay:g} p {r.config.aug_prob:g}",
                [h["val_loss"] for h in r.history],
            )
            for r in results
        ],
        out / "sweep_val_loss.png",
    )
    best = results[best_i]
    save_heads(
        heads_record(
            best.heads,
            best.config,
            fingerprint,
            store_path,
            best_epoch=best.best_epoch,
            best_val_loss=best.best_val_loss,
            history=best.history,
            finished=True,
            stop_reason="sweep",
            n_train=len(data.train),
            n_val=len(data.selection),
            image_head_init=best.image_head_init,
        ),
        out / "best" / HEADS_FILE,
    )
    chosen = ", ".join(
        f"{name} {rows[best_i][name]:g}" if isinstance(rows[best_i][name], float) else f"{name} {rows[best_i][name]}"
        for name in grid
    )
    logger.info(
        "sweep: %d configurations in %.1f s; best: configuration %d (%s), selection-split loss %.4f",
        len(rows),
        elapsed,
        best_i,
        chosen,
        best.best_val_loss,
    )
    return rows
