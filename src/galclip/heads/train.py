"""Stage two: train both heads with symmetric InfoNCE on features held in memory.

The report's recipe: batch 512, Adam, ReduceLROnPlateau(factor 0.5, patience 5) on the
validation loss, 80 epochs, fixed τ. Features live on the training device in fp16 and are cast
per batch; each step may swap a pair's clean image features for one of its stored augmented
views (``aug_prob``), so augmentation costs nothing. The heads kept are those of the epoch with
the lowest validation loss, and training stops early after ``early_stopping`` epochs without
improvement. A checkpoint is written after every epoch; ``resume=True`` continues a run exactly.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from galclip.atomic import atomic_path, atomic_write_text
from galclip.config import HeadConfig
from galclip.errors import GalclipError
from galclip.heads.data import FeatureSet, load_features, to_device
from galclip.heads.loss import info_nce
from galclip.heads.models import CLIPHeads
from galclip.provenance import resolve_device
from galclip.store import FeatureStore

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "galclip-heads/1"
CHECKPOINT_FILE = "heads.pt"
HISTORY_FILE = "history.json"


def save_atomic(obj: object, path: Path) -> None:
    """torch.save through a temporary file in the same folder, fsync'ed, then renamed over ``path``."""
    with atomic_path(path, fsync=True) as tmp:
        torch.save(obj, tmp)


def write_json_atomic(obj: object, path: Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, allow_nan=False, default=float), path)


@torch.no_grad()
def mean_loss(heads: CLIPHeads, feats: FeatureSet, batch_size: int) -> float:
    """Mean InfoNCE over fixed consecutive batches of clean features (the validation protocol)."""
    heads.eval()
    total, count = 0.0, 0
    for lo in range(0, len(feats), batch_size):
        idx = torch.arange(lo, min(lo + batch_size, len(feats)), device=feats.image.device)
        if len(idx) < 2:
            continue
        xi, xs = feats.batch(idx)
        total += float(info_nce(heads.image(xi), heads.spectrum(xs), heads.tau())) * len(idx)
        count += len(idx)
    heads.train()
    return total / max(count, 1)


def sample_views(gen: torch.Generator, n: int, n_views: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair of a batch: a uniform (n,) to compare with aug_prob, and a view index (n,)."""
    u = torch.rand(n, generator=gen)
    view = torch.randint(n_views, (n,), generator=gen)
    return u.to(device), view.to(device)


def read_checkpoint(path: Path, device, hint: str) -> dict:
    """``torch.load`` a checkpoint dict; an unreadable file is a user error ending with ``hint``."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise GalclipError(f"{path}: cannot read the checkpoint ({err}); {hint}") from err
    if not isinstance(ckpt, dict):
        raise GalclipError(f"{path}: not a galclip heads checkpoint; {hint}")
    return ckpt


def _check_resumable(ckpt: dict, config: HeadConfig, fingerprint: str, path: Path) -> None:
    if ckpt.get("store_fingerprint") != fingerprint:
        raise GalclipError(f"{path}: was trained on another store (fingerprint {ckpt.get('store_fingerprint')}, "
                           f"this store {fingerprint}); cannot resume")
    old = {k: v for k, v in ckpt["config"].items() if k != "device"}
    new = {k: v for k, v in asdict(config).items() if k != "device"}
    new["spectrum_hidden"] = list(new["spectrum_hidden"])
    old["spectrum_hidden"] = list(old["spectrum_hidden"])
    diff = {k: (old.get(k), new[k]) for k in new if old.get(k) != new[k]}
    if diff:
        raise GalclipError(f"{path}: cannot resume with other settings: " +
                           ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in diff.items()))


def train_heads(
    store_path: str | Path, out_dir: str | Path, config: HeadConfig,
    fc_state: dict[str, torch.Tensor] | None = None, progress: bool = True, allow_partial: bool = False,
    resume: bool = False, stop_after: int | None = None,
) -> dict:
    """Train heads on the store's train split, select on its validation split.

    Writes ``heads.pt`` (best heads, config, store fingerprint, last heads, optimiser, scheduler
    and generator state, history) after every epoch and ``history.json`` at the end into
    ``out_dir``. ``resume`` continues from ``heads.pt``; ``stop_after`` ends this session after
    that many epochs (a later ``resume`` finishes the run identically). Returns a summary.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = FeatureStore.open(store_path)
    fingerprint = store.fingerprint()
    data = load_features(store, allow_partial)
    train, val = np.flatnonzero(data["split"] == 0), np.flatnonzero(data["split"] == 1)
    if len(train) < 2 or len(val) < 2:
        raise GalclipError(f"{store_path}: needs at least 2 train and 2 validation pairs "
                           f"(has {len(train)} and {len(val)})")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    heads = CLIPHeads.from_config(config)
    if fc_state is None and config.image_hidden == 2048 and config.embed_dim == 128:
        stored_fc = store.moco_fc()
        fc_state = {k: torch.from_numpy(v) for k, v in stored_fc.items()} if stored_fc is not None else None
    if config.standardise:
        heads.image.norm.fit(data["image_features"][train])
        heads.spectrum.norm.fit(data["spectrum_features"][train])
    if fc_state is not None:
        heads.load_moco_fc(fc_state)  # folds the standardisation in: the head starts as the pretrained MLP
        logger.info("image head initialised from the Stein checkpoint's projection MLP")
    heads.to(device)
    use_aug = config.aug_prob > 0 and "image_features_aug" in data
    tr_set = to_device(data, train, device, with_aug=use_aug)
    va_set = to_device(data, val, device, with_aug=False)
    n_views = tr_set.image_aug.shape[1] if tr_set.image_aug is not None else 0

    decayed = [p for name, p in heads.named_parameters() if name != "log_inv_tau"]
    groups = [{"params": decayed}] + ([{"params": [heads.log_inv_tau], "weight_decay": 0.0}] if config.learn_tau else [])
    opt = torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay, fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=config.lr_factor, patience=config.lr_patience)
    gen = torch.Generator().manual_seed(config.seed)
    history: list[dict] = []
    best = {"val_loss": math.inf, "epoch": -1, "state": copy.deepcopy(heads.state_dict())}
    start_epoch = 0
    stop_reason = "epochs"
    ckpt_path = out / CHECKPOINT_FILE
    if resume:
        if not ckpt_path.exists():
            raise GalclipError(f"{ckpt_path}: nothing to resume; run without --resume")
        ckpt = read_checkpoint(ckpt_path, device, "start without --resume")
        if "last_state_dict" not in ckpt:
            raise GalclipError(f"{ckpt_path}: not a resumable galclip training checkpoint (a sweep's best/heads.pt "
                               "holds only the selected heads); start without --resume")
        _check_resumable(ckpt, config, fingerprint, ckpt_path)
        if ckpt.get("device_type", "cpu") != device.type or (ckpt.get("n_train"), ckpt.get("n_val")) != (len(train), len(val)):
            raise GalclipError(
                f"{ckpt_path}: the run was on {ckpt.get('device_type', 'cpu')} with {ckpt.get('n_train')} train / "
                f"{ckpt.get('n_val')} validation pairs; this session has {device.type} and {len(train)} / {len(val)}: "
                "resuming would not reproduce the run"
            )
        heads.load_state_dict(ckpt["last_state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        gen.set_state(ckpt["generator"].cpu())
        history = ckpt["history"]
        best = {"val_loss": ckpt["best_val_loss"], "epoch": ckpt["best_epoch"], "state": ckpt["state_dict"]}
        start_epoch = ckpt["epoch"] + 1
        if ckpt.get("finished"):
            logger.info("%s: this run already finished (%s); nothing to do", ckpt_path, ckpt.get("stop_reason"))
            start_epoch = config.epochs
            stop_reason = ckpt.get("stop_reason", "epochs")
        else:
            logger.info("resuming %s at epoch %d", ckpt_path, start_epoch)

    def checkpoint(epoch: int, finished: bool, stop_reason: str) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "config": asdict(config), "store_fingerprint": fingerprint,
            "store_path": str(Path(store_path).resolve()), "state_dict": best["state"],
            "best_epoch": best["epoch"], "best_val_loss": best["val_loss"], "epoch": epoch,
            "last_state_dict": heads.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "generator": gen.get_state(), "history": history, "finished": finished, "stop_reason": stop_reason,
            "n_train": len(train), "n_val": len(val), "device_type": device.type, "image_head_init": "moco_fc" if fc_state is not None else "random",
        }

    n = len(tr_set)
    bar = tqdm(total=config.epochs, initial=start_epoch, desc="heads", unit="epoch", disable=not progress)
    epochs_this_session = 0
    for epoch in range(start_epoch, config.epochs):
        if config.early_stopping is not None and best["epoch"] >= 0 and epoch - 1 - best["epoch"] >= config.early_stopping:
            stop_reason = f"no validation improvement for {config.early_stopping} epochs"
            break
        te = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(device)
        total, seen = torch.zeros((), device=device), 0
        for lo in range(0, n, config.batch_size):
            idx = perm[lo:lo + config.batch_size]
            if len(idx) < 2:
                continue
            use = view = None
            if n_views:
                u, view = sample_views(gen, len(idx), n_views, device)
                use = u < config.aug_prob
            xi, xs = tr_set.batch(idx, use, view)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):  # never on CPU
                zi, zs = heads.image(xi), heads.spectrum(xs)
            loss = info_nce(zi.float(), zs.float(), heads.tau())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
            seen += len(idx)
        train_loss = float(total) / max(seen, 1)
        val_loss = mean_loss(heads, va_set, config.batch_size)
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            kept = f"{ckpt_path} still holds the checkpoint of the last good epoch" if ckpt_path.exists() else "nothing was saved"
            raise GalclipError(
                f"training diverged at epoch {epoch}: train loss {train_loss}, val loss {val_loss}; {kept} "
                f"(best heads: epoch {best['epoch']}). Lower --lr or raise --tau"
            )
        sched.step(val_loss)
        lr = opt.param_groups[0]["lr"]
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr,
                        "tau": float(heads.tau().detach()), "seconds": time.perf_counter() - te})
        if val_loss < best["val_loss"]:
            best.update(val_loss=val_loss, epoch=epoch, state=copy.deepcopy(heads.state_dict()))
        logger.info("epoch %3d: train %.4f  val %.4f  lr %.2e  tau %.3f  %.2fs",
                    epoch, train_loss, val_loss, lr, history[-1]["tau"], history[-1]["seconds"])
        bar.update(1)
        bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
        epochs_this_session += 1
        last = epoch == config.epochs - 1
        save_atomic(checkpoint(epoch, last, stop_reason), ckpt_path)
        if stop_after is not None and epochs_this_session >= stop_after and not last:
            bar.close()
            logger.info("stopping after %d epochs as asked; continue with resume", epochs_this_session)
            return {"epochs_run": len(history), "finished": False, "best_epoch": best["epoch"],
                    "best_val_loss": best["val_loss"], "seconds": time.perf_counter() - t0}
    bar.close()
    if not history:
        raise GalclipError(f"{ckpt_path}: no epoch was trained")
    save_atomic(checkpoint(history[-1]["epoch"], True, stop_reason), ckpt_path)
    summary = {
        "epochs_run": len(history), "best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
        "final_train_loss": history[-1]["train_loss"], "stop_reason": stop_reason, "finished": True,
        "seconds": time.perf_counter() - t0, "n_train": len(train), "n_val": len(val),
        "store_fingerprint": fingerprint, "config": asdict(config), "device": str(device),
        "image_head_init": "moco_fc" if fc_state is not None else "random", "augmented_views": n_views,
        "seconds_per_epoch": float(np.median([h["seconds"] for h in history])),
    }
    write_json_atomic({"summary": summary, "history": history}, out / HISTORY_FILE)
    logger.info("heads: best val loss %.4f at epoch %d (%s); %.1f s -> %s",
                best["val_loss"], best["epoch"], stop_reason, summary["seconds"], ckpt_path)
    return summary


def checkpoint_file(path: str | Path) -> Path:
    """``heads.pt`` for a heads folder, or the file itself."""
    path = Path(path)
    return path / CHECKPOINT_FILE if path.is_dir() else path


def load_heads(path: str | Path, store: FeatureStore | None = None, device: str = "cpu") -> tuple[CLIPHeads, dict]:
    """Rebuild trained heads from ``heads.pt``; refuses a store with another fingerprint."""
    path = checkpoint_file(path)
    if not path.exists():
        raise GalclipError(f"{path}: no heads checkpoint; train one with 'galclip heads STORE OUT'")
    ckpt = read_checkpoint(path, device, "train heads with 'galclip heads STORE OUT'")
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise GalclipError(f"{path}: not a galclip heads checkpoint")
    if store is not None and ckpt["store_fingerprint"] != store.fingerprint():
        raise GalclipError(
            f"{path}: these heads were trained on a store with fingerprint {ckpt['store_fingerprint']} "
            f"({ckpt.get('store_path')}), but {store.path} has {store.fingerprint()}; "
            "train heads on this store, or point at the store they were trained on"
        )
    heads = CLIPHeads.from_config(HeadConfig(**ckpt["config"]))
    state = dict(ckpt["state_dict"])
    state.setdefault("log_inv_tau", heads.log_inv_tau.detach().clone())  # galclip < 0.1 kept τ only in the config
    missing, unexpected = sorted(set(heads.state_dict()) - set(state)), sorted(set(state) - set(heads.state_dict()))
    if missing or unexpected:
        raise GalclipError(f"{path}: heads do not match their config: missing {missing[:8]}, unexpected {unexpected[:8]}")
    heads.load_state_dict(state)
    return heads.to(device).eval(), ckpt
