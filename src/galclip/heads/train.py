"""Stage two: train both heads with symmetric InfoNCE on features held in memory.

The report's recipe: batch 512, Adam, ReduceLROnPlateau(factor 0.5, patience 5) on the
validation loss, 80 epochs, fixed τ. The heads kept are those of the epoch with the lowest
validation loss (with ~thousands of pairs the 4.5M-parameter image head memorises quickly),
and training stops early after ``early_stopping`` epochs without improvement.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from galclip.config import HeadConfig
from galclip.errors import GalclipError
from galclip.heads.loss import info_nce
from galclip.heads.models import CLIPHeads
from galclip.provenance import resolve_device
from galclip.store import FeatureStore

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "galclip-heads/1"
CHECKPOINT_FILE = "heads.pt"
HISTORY_FILE = "history.json"


def save_atomic(obj: object, path: Path) -> None:
    """torch.save to a temporary name in the same folder, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(obj: object, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=False, default=float))
    os.replace(tmp, path)


@torch.no_grad()
def mean_loss(heads: CLIPHeads, xi: torch.Tensor, xs: torch.Tensor, tau: float, batch_size: int) -> float:
    """Mean InfoNCE over fixed consecutive batches (the validation protocol): scalar."""
    heads.eval()
    total, count = 0.0, 0
    for lo in range(0, len(xi), batch_size):
        bi, bs = xi[lo:lo + batch_size], xs[lo:lo + batch_size]
        if len(bi) < 2:
            continue
        total += float(info_nce(heads.image(bi), heads.spectrum(bs), tau)) * len(bi)
        count += len(bi)
    heads.train()
    return total / max(count, 1)


def load_split_features(store: FeatureStore, allow_partial: bool = False) -> dict[str, np.ndarray]:
    """Features and metadata of the complete shards, with train/validation masks."""
    data = store.load(allow_partial=allow_partial)
    bad = ~(np.isfinite(data["image_features"]).all(1) & np.isfinite(data["spectrum_features"]).all(1))
    if bad.any():
        raise GalclipError(
            f"{store.path}: {int(bad.sum())} rows have non-finite features, e.g. targetid "
            f"{data['targetid'][bad][:5].tolist()}; re-run extraction or check those inputs ('galclip check')"
        )
    return data


def train_heads(
    store_path: str | Path, out_dir: str | Path, config: HeadConfig,
    fc_state: dict[str, torch.Tensor] | None = None, progress: bool = True, allow_partial: bool = False,
) -> dict:
    """Train heads on the store's train split, select on its validation split.

    Writes ``heads.pt`` (best heads, config, store fingerprint, optimiser and scheduler state,
    history) and ``history.json`` into ``out_dir``; returns a summary dict.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = FeatureStore.open(store_path)
    data = load_split_features(store, allow_partial)
    train, val = data["split"] == 0, data["split"] == 1
    if train.sum() < 2 or val.sum() < 2:
        raise GalclipError(f"{store_path}: needs at least 2 train and 2 validation pairs "
                           f"(has {int(train.sum())} and {int(val.sum())})")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    heads = CLIPHeads(config.embed_dim, config.standardise)
    if fc_state is None and (stored_fc := store.moco_fc()) is not None:
        fc_state = {k: torch.from_numpy(v) for k, v in stored_fc.items()}
    if fc_state is not None:
        heads.load_moco_fc(fc_state)
        logger.info("image head initialised from the Stein checkpoint's projection MLP")
    if config.standardise:
        heads.image.norm.fit(data["image_features"][train])
        heads.spectrum.norm.fit(data["spectrum_features"][train])
    heads.to(device)
    as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)  # noqa: E731
    ti, ts = as_t(data["image_features"][train]), as_t(data["spectrum_features"][train])
    vi, vs = as_t(data["image_features"][val]), as_t(data["spectrum_features"][val])

    opt = torch.optim.Adam(heads.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=config.lr_factor, patience=config.lr_patience)
    gen = torch.Generator().manual_seed(config.seed)
    history: list[dict] = []
    best = {"val_loss": math.inf, "epoch": -1, "state": copy.deepcopy(heads.state_dict())}
    fingerprint = store.fingerprint()

    def checkpoint(epoch: int) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "config": asdict(config), "store_fingerprint": fingerprint,
            "store_path": str(Path(store_path).resolve()), "state_dict": best["state"],
            "best_epoch": best["epoch"], "best_val_loss": best["val_loss"], "epoch": epoch,
            "last_state_dict": heads.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "generator": gen.get_state(), "history": history,
            "n_train": int(train.sum()), "n_val": int(val.sum()),
        }

    n = len(ti)
    bar = tqdm(range(config.epochs), desc="heads", unit="epoch", disable=not progress)
    stop_reason = "epochs"
    for epoch in bar:
        te = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(device)
        total, seen = torch.zeros((), device=device), 0
        for lo in range(0, n, config.batch_size):
            idx = perm[lo:lo + config.batch_size]
            if len(idx) < 2:
                continue
            loss = info_nce(heads.image(ti[idx]), heads.spectrum(ts[idx]), config.tau)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
            seen += len(idx)
        train_loss = float(total) / max(seen, 1)
        val_loss = mean_loss(heads, vi, vs, config.tau, config.batch_size)
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            save_atomic(checkpoint(epoch), out / CHECKPOINT_FILE)
            raise GalclipError(
                f"training diverged at epoch {epoch}: train loss {train_loss}, val loss {val_loss}. "
                f"The best heads so far (epoch {best['epoch']}) are saved in {out / CHECKPOINT_FILE}; "
                "lower --lr or raise --tau"
            )
        sched.step(val_loss)
        lr = opt.param_groups[0]["lr"]
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr,
                        "tau": config.tau, "seconds": time.perf_counter() - te})
        if val_loss < best["val_loss"]:
            best.update(val_loss=val_loss, epoch=epoch, state=copy.deepcopy(heads.state_dict()))
        logger.info("epoch %3d: train %.4f  val %.4f  lr %.2e  tau %.3f  %.2fs",
                    epoch, train_loss, val_loss, lr, config.tau, history[-1]["seconds"])
        bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
        if config.early_stopping is not None and epoch - best["epoch"] >= config.early_stopping:
            stop_reason = f"no validation improvement for {config.early_stopping} epochs"
            break
    bar.close()
    save_atomic(checkpoint(history[-1]["epoch"]), out / CHECKPOINT_FILE)
    summary = {
        "epochs_run": len(history), "best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
        "final_train_loss": history[-1]["train_loss"], "stop_reason": stop_reason,
        "seconds": time.perf_counter() - t0, "n_train": int(train.sum()), "n_val": int(val.sum()),
        "store_fingerprint": fingerprint, "config": asdict(config), "device": str(device),
        "image_head_init": "moco_fc" if fc_state is not None else "random",
    }
    write_json_atomic({"summary": summary, "history": history}, out / HISTORY_FILE)
    logger.info("heads: best val loss %.4f at epoch %d (%s); %.1f s -> %s",
                best["val_loss"], best["epoch"], stop_reason, summary["seconds"], out / CHECKPOINT_FILE)
    return summary


def load_heads(path: str | Path, store: FeatureStore | None = None, device: str = "cpu") -> tuple[CLIPHeads, dict]:
    """Rebuild trained heads from ``heads.pt``; refuses a store with another fingerprint."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.exists():
        raise GalclipError(f"{path}: no heads checkpoint; train one with 'galclip heads STORE OUT'")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise GalclipError(f"{path}: cannot read the heads checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise GalclipError(f"{path}: not a galclip heads checkpoint")
    if store is not None and ckpt["store_fingerprint"] != store.fingerprint():
        raise GalclipError(
            f"{path}: these heads were trained on a store with fingerprint {ckpt['store_fingerprint']} "
            f"({ckpt.get('store_path')}), but {store.path} has {store.fingerprint()}; "
            "train heads on this store, or point at the store they were trained on"
        )
    cfg = HeadConfig(**ckpt["config"])
    heads = CLIPHeads(cfg.embed_dim, cfg.standardise)
    heads.load_state_dict(ckpt["state_dict"])
    return heads.to(device).eval(), ckpt
