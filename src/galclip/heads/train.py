"""``galclip heads``: one configuration (K = 1) of the trainer, with its files.

Writes into the heads folder: ``heads.pt`` (the selected weights, what index, search and evaluate
read), ``train_state.pt`` (after every epoch; what ``--resume`` reads), ``history.json`` (summary
and per-epoch losses) and ``loss_curve.png``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from galclip.atomic import atomic_write_text
from galclip.config import HeadConfig
from galclip.errors import GalclipError
from galclip.heads.checkpoint import HEADS_FILE, STATE_FILE, heads_record, save_heads
from galclip.heads.data import load_training_data
from galclip.heads.trainer import train_configurations
from galclip.provenance import resolve_device
from galclip.store import FeatureStore

logger = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
LOSS_CURVE_FILE = "loss_curve.png"


def write_json_atomic(obj: object, path: Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, allow_nan=False, default=float), path)


def stored_fc_state(store: FeatureStore) -> dict[str, torch.Tensor] | None:
    """The Stein checkpoint's projection MLP kept in the store, as tensors (None without one)."""
    stored = store.moco_fc()
    return {k: torch.from_numpy(v) for k, v in stored.items()} if stored is not None else None


def train_heads(
    store_path: str | Path, out_dir: str | Path, config: HeadConfig,
    fc_state: dict[str, torch.Tensor] | None = None, progress: bool = True, allow_partial: bool = False,
    resume: bool = False, stop_after: int | None = None,
) -> dict:
    """Train heads on the store's train split, select on its validation split; returns a summary.

    ``resume`` continues the run in ``out_dir`` from its ``train_state.pt``; ``stop_after`` ends this
    session after that many epochs (a later ``resume`` finishes the run identically). ``fc_state``
    overrides the projection MLP stored with the store's image encoder.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = FeatureStore.open(store_path)
    fingerprint = store.fingerprint()
    data = load_training_data(store, allow_partial, with_aug=config.aug_prob > 0, standardise=config.standardise)
    n_train, n_val = len(data.train), len(data.val)
    device = resolve_device(config.device)
    state_path = out / STATE_FILE
    (result,), finished = train_configurations(
        [config], data, device, fingerprint, fc_state if fc_state is not None else stored_fc_state(store),
        state_path=state_path, resume=resume, stop_after=stop_after, progress=progress)
    record = heads_record(result.heads, config, fingerprint, store_path, best_epoch=result.best_epoch,
                          best_val_loss=result.best_val_loss, history=result.history,
                          finished=finished and result.diverged is None,
                          stop_reason=result.stop_reason, n_train=n_train, n_val=n_val,
                          image_head_init=result.image_head_init)
    if result.diverged is not None:
        d = result.diverged
        if result.best_epoch >= 0:
            save_heads(record, out / HEADS_FILE)
            kept = (f"{state_path} still holds the checkpoint of the last good epoch, and {out / HEADS_FILE} the best "
                    f"heads (epoch {result.best_epoch})")
        else:
            kept = "nothing was saved"
        raise GalclipError(f"training diverged at epoch {d['epoch']}: train loss {d['train_loss']}, val loss "
                           f"{d['val_loss']}; {kept}. Lower --lr or raise --tau")
    if not result.history:
        raise GalclipError(f"{out}: no epoch was trained")
    save_heads(record, out / HEADS_FILE)
    summary = {
        "epochs_run": len(result.history), "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
        "final_train_loss": result.history[-1]["train_loss"], "stop_reason": result.stop_reason,
        "finished": finished, "seconds": time.perf_counter() - t0, "n_train": n_train, "n_val": n_val,
        "store_fingerprint": fingerprint, "config": asdict(config), "device": str(device),
        "image_head_init": result.image_head_init,
        "augmented_views": data.n_views,
        "seconds_per_epoch": float(np.median([h["seconds"] for h in result.history])),
    }
    if not finished:
        return summary
    from galclip.figures import plot_loss_curves

    write_json_atomic({"summary": summary, "history": result.history}, out / HISTORY_FILE)
    plot_loss_curves({k: [h[k] for h in result.history] for k in ("train_loss", "val_loss", "lr")}, out / LOSS_CURVE_FILE)
    logger.info("heads: best val loss %.4f at epoch %d (%s); %.1f s -> %s", result.best_val_loss, result.best_epoch,
                result.stop_reason, summary["seconds"], out / HEADS_FILE)
    return summary
