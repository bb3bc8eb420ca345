"""``galclip heads``: one configuration (K = 1) of the trainer, with its files.

Writes into the heads folder: ``heads.pt`` (the selected weights, what index, search and evaluate
read), ``train_state.pt`` (after every epoch; what ``--resume`` reads), ``history.json`` (summary
and per-epoch losses) and ``loss_curve.png``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from galclip.atomic import write_json
from galclip.config import HeadConfig
from galclip.errors import GalclipError
from galclip.heads.checkpoint import HEADS_FILE, STATE_FILE, heads_record, save_heads
from galclip.heads.data import load_training_data
from galclip.heads.trainer import train_configurations
from galclip.outputs import OutputExistsError, check_output_dir, output_dir
from galclip.provenance import resolve_device
from galclip.store import FeatureStore

logger = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
LOSS_CURVE_FILE = "loss_curve.png"
HEADS_OUTPUT_NAMES = (HEADS_FILE, STATE_FILE, HISTORY_FILE, LOSS_CURVE_FILE, "umap_cache")  # umap_cache: evaluate's


def check_heads_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to train into ``out`` when that would replace heads the user has (an index or a report built from
    them would go stale), or when ``out`` is another command's folder; writes nothing."""
    check_output_dir(out, "heads", HEADS_OUTPUT_NAMES, overwrite)
    existing = out / HEADS_FILE
    if resume or overwrite or not existing.exists():
        return
    try:
        record = torch.load(existing, map_location="cpu", weights_only=True)
        what = (
            f"trained heads (best epoch {record.get('best_epoch')}, selection loss "
            f"{float(record.get('best_val_loss', float('nan'))):.4f})"
        )
    except Exception:
        what = "a heads file"
    raise OutputExistsError(
        f"{existing}: already holds {what}; training again would replace them. Pass --resume to "
        "continue an unfinished run, --overwrite to replace them, or choose another OUT folder"
    )


def stop_words(stop_reason: str, epochs: int) -> str:
    """Why training stopped, as a phrase: 'all 80 epochs run', 'stopped early: no validation improvement ...'."""
    return f"all {epochs} epochs run" if stop_reason == "epochs" else f"stopped early: {stop_reason}"


def stored_fc_state(store: FeatureStore) -> dict[str, torch.Tensor] | None:
    """The Stein checkpoint's projection MLP kept in the store, as tensors (None without one)."""
    stored = store.moco_fc()
    return {k: torch.from_numpy(v) for k, v in stored.items()} if stored is not None else None


def train_heads(
    store_path: str | Path,
    out_dir: str | Path,
    config: HeadConfig,
    fc_state: dict[str, torch.Tensor] | None = None,
    progress: bool = True,
    allow_partial: bool = False,
    resume: bool = False,
    stop_after: int | None = None,
    overwrite: bool = False,
    save_every_s: float = 10.0,
) -> dict:
    """Train heads on the store's train split, select on its selection split; returns a summary.

    ``resume`` continues the run in ``out_dir`` from its ``train_state.pt``; ``stop_after`` ends this
    session after that many epochs (a later ``resume`` finishes the run identically). ``fc_state``
    overrides the projection MLP stored with the store's image encoder. ``out_dir`` must be new, empty or an
    earlier heads folder, and existing heads are replaced only with ``overwrite`` (``galclip.outputs``).
    ``train_state.pt`` is written at most every ``save_every_s`` seconds (0: every epoch), and always at the end.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    store = FeatureStore.open(store_path)
    device = resolve_device(config.device)
    check_heads_out(out, resume, overwrite)
    fingerprint = store.fingerprint()
    data = load_training_data(store, allow_partial, with_aug=config.aug_prob > 0, standardise=config.standardise)
    n_train, n_val = len(data.train), len(data.selection)
    state_path = out / STATE_FILE
    with output_dir(out, "heads", HEADS_OUTPUT_NAMES, overwrite=True):
        t_train = time.perf_counter()
        (result,), finished = train_configurations(
            [config],
            data,
            device,
            fingerprint,
            fc_state if fc_state is not None else stored_fc_state(store),
            state_path=state_path,
            resume=resume,
            stop_after=stop_after,
            progress=progress,
            save_every_s=save_every_s,
        )
        train_wall = time.perf_counter() - t_train
    record = heads_record(
        result.heads,
        config,
        fingerprint,
        store_path,
        best_epoch=result.best_epoch,
        best_val_loss=result.best_val_loss,
        history=result.history,
        finished=finished and result.diverged is None,
        stop_reason=result.stop_reason,
        n_train=n_train,
        n_val=n_val,
        image_head_init=result.image_head_init,
    )
    if result.diverged is not None:
        d = result.diverged
        if result.best_epoch >= 0:
            save_heads(record, out / HEADS_FILE)
            kept = (
                f"{state_path} still holds the checkpoint of the last good epoch, and {out / HEADS_FILE} the best "
                f"heads (epoch {result.best_epoch})"
            )
        else:
            kept = "nothing was saved"
        raise GalclipError(
            f"training diverged at epoch {d['epoch']}: train loss {d['train_loss']}, selection-split loss "
            f"{d['val_loss']}; {kept}. Lower --lr or raise --tau"
        )
    if not result.history:
        raise GalclipError(f"{out}: no epoch was trained")
    save_heads(record, out / HEADS_FILE)
    summary = {
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "final_train_loss": result.history[-1]["train_loss"],
        "stop_reason": result.stop_reason,
        "finished": finished,
        "seconds": time.perf_counter() - t0,
        "n_train": n_train,
        "n_val": n_val,
        "store_fingerprint": fingerprint,
        "config": asdict(config),
        "device": str(device),
        "image_head_init": result.image_head_init,
        "augmented_views": data.n_views,
        "seconds_per_epoch": float(np.median([h["seconds"] for h in result.history])),
        "wall_seconds_per_epoch": train_wall / max(1, result.epochs_this_session),
    }
    if not finished:
        return summary
    from galclip.figures import plot_loss_curves

    write_json({"summary": summary, "history": result.history}, out / HISTORY_FILE)
    plot_loss_curves(
        {k: [h[k] for h in result.history] for k in ("train_loss", "val_loss", "lr")}, out / LOSS_CURVE_FILE
    )
    logger.info(
        "heads: best selection-split loss %.4f at epoch %d, %s; %.1f s -> %s",
        result.best_val_loss,
        result.best_epoch,
        stop_words(result.stop_reason, config.epochs),
        summary["seconds"],
        out / HEADS_FILE,
    )
    return summary
