"""The heads' files: trained weights apart from the state that resumes training.

``heads.pt`` (format ``galclip-heads/2``) is what index, search, evaluate and a notebook read:
the selected heads' weights (standardisation buffers included), their ``HeadConfig``, the store
fingerprint and the loss history; its size is about the parameters' bytes. It is loaded with
``torch.load(weights_only=True)``: plain tensors, numbers, strings, lists and dicts only.

``train_state.pt`` (format ``galclip-train-state/1``) is what ``galclip heads --resume`` reads:
per configuration the last weights, the optimiser and scheduler state and the best weights so far,
plus the shared batch generator and the history. Nothing but the trainer reads it.

Both are written atomically (temporary file, fsync, rename). ``heads.pt`` carries
``content_sha256``, a SHA-256 of every tensor's bytes and every other field, checked on load, so a
flipped bit anywhere in it is refused rather than loaded as other weights.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from galclip.atomic import atomic_path
from galclip.config import HeadConfig
from galclip.errors import DamagedDataError, GalclipError
from galclip.heads.models import CLIPHeads
from galclip.state_dicts import load_exactly, read_checkpoint

logger = logging.getLogger(__name__)

HEADS_FORMAT = "galclip-heads/2"
OLD_HEADS_FORMAT = "galclip-heads/1"  # galclip 0.1 (before the split): weights plus resume state in one file
STATE_FORMAT = "galclip-train-state/1"
HEADS_FILE = "heads.pt"
STATE_FILE = "train_state.pt"
RETRAIN = "train heads with 'galclip heads STORE OUT'"
NAME = "heads"
REPAIR = f"retrain them ({RETRAIN}), or restore {HEADS_FILE} from a copy"


def save_atomic(obj: object, path: Path) -> None:
    """torch.save through a temporary file in the same folder, fsync'ed, then renamed over ``path``. Serialised in
    memory first and written by Python, so a full disk is an OSError naming the file (torch.save's own writer says
    only 'unexpected pos')."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getbuffer())


def checkpoint_file(path: str | Path) -> Path:
    """``heads.pt`` for a heads folder, or the file itself."""
    path = Path(path)
    return path / HEADS_FILE if path.is_dir() else path


def read_torch_file(path: Path, hint: str) -> dict:
    """``torch.load(weights_only=True)`` a dict; an unreadable or foreign file is a user error ending with ``hint``."""
    obj = read_checkpoint(path, "checkpoint", GalclipError, hint)
    if not isinstance(obj, dict):
        raise GalclipError(f"{path}: not a galclip heads checkpoint; {hint}")
    return obj


def heads_record(
    heads: CLIPHeads, config: HeadConfig, store_fingerprint: str, store_path: str | Path, **summary
) -> dict:
    """The ``heads.pt`` content: weights (cloned, so the file holds nothing else) and what rebuilds them.

    ``summary`` adds small fields: best_epoch, best_val_loss, history, stop_reason, n_train, n_val, ...
    """
    state = {k: v.detach().cpu().clone() for k, v in heads.state_dict().items()}
    return {
        "format": HEADS_FORMAT,
        "config": asdict(config),
        "store_fingerprint": store_fingerprint,
        "store_path": str(Path(store_path).resolve()),
        "state_dict": state,
        **summary,
    }


def content_sha256(record: dict) -> str:
    """SHA-256 of a heads record without its ``content_sha256``: every tensor (name, dtype, shape, bytes, in name
    order) and the canonical JSON of every other field."""
    h = hashlib.sha256()
    state = record.get("state_dict") or {}
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    rest = {k: v for k, v in record.items() if k not in ("state_dict", "content_sha256")}
    h.update(json.dumps(rest, sort_keys=True, default=str).encode())
    return h.hexdigest()


def verify(path: str | Path) -> tuple[list[str], dict | None]:
    """Every problem of a heads file or folder (unreadable, foreign, damaged against its SHA-256, weights that do not
    fit their config) and its record when readable: ([], record) when intact. Never raises on damage."""
    try:
        _, record = load_heads(path)
    except GalclipError as err:
        return [str(err)], None
    return [], record


def save_heads(record: dict, path: str | Path) -> Path:
    """Write a :func:`heads_record` to ``path`` atomically, with its ``content_sha256``."""
    save_atomic({**record, "content_sha256": content_sha256(record)}, Path(path))
    return Path(path)


def load_heads(path: str | Path, store=None, device: str = "cpu") -> tuple[CLIPHeads, dict]:
    """Rebuild trained heads from ``heads.pt`` (or a heads folder): (heads in eval mode, the record).

    Refuses a ``store`` (a ``FeatureStore``) with another fingerprint. Reads galclip 0.1's
    ``galclip-heads/1`` files too (their selected weights; the resume state in them is ignored).
    """
    path = checkpoint_file(path)
    if not path.exists():
        raise GalclipError(f"{path}: no heads checkpoint; {RETRAIN}")
    record = read_torch_file(path, RETRAIN)
    fmt = record.get("format")
    if fmt == STATE_FORMAT:
        raise GalclipError(
            f"{path}: is a training state (for --resume), not heads; point at {path.parent / HEADS_FILE}"
        )
    if fmt not in (HEADS_FORMAT, OLD_HEADS_FORMAT) or "state_dict" not in record or "config" not in record:
        raise GalclipError(f"{path}: not a galclip heads checkpoint (format {fmt!r}); {RETRAIN}")
    if fmt == OLD_HEADS_FORMAT:
        logger.info("%s: a galclip 0.1 checkpoint; reading its selected weights", path)
    if "content_sha256" in record and content_sha256(record) != record["content_sha256"]:
        raise DamagedDataError(
            f"{path}: the heads do not match their SHA-256 (the file is damaged); {RETRAIN}, or "
            "restore the file from a copy"
        )
    if store is not None and record["store_fingerprint"] != store.fingerprint():
        raise GalclipError(
            f"{path}: these heads were trained on a store with fingerprint {record['store_fingerprint']} "
            f"({record.get('store_path')}), but {store.path} has {store.fingerprint()}; "
            "train heads on this store, or point at the store they were trained on"
        )
    try:
        config = HeadConfig(**record["config"])
    except (TypeError, ValueError) as err:
        raise GalclipError(f"{path}: its head configuration is not readable ({err}); {RETRAIN}") from err
    heads = CLIPHeads.from_config(config)
    state = dict(record["state_dict"])
    state.setdefault("log_inv_tau", heads.log_inv_tau.detach().clone())  # galclip < 0.1 kept τ only in the config
    load_exactly(heads, state, path, f"the heads its config describes ({RETRAIN})", GalclipError, shown=8)
    return heads.to(device).eval(), record


def read_train_state(
    path: Path, configs: list[HeadConfig], fingerprint: str, n_train: int, n_val: int, device_type: str
) -> dict:
    """The resume state at ``path``, checked against this session: same settings, store, split sizes and
    device kind, else an error naming the difference (resuming would not reproduce the run)."""
    if not path.exists():
        old = path.parent / HEADS_FILE
        if old.exists() and torch.load(old, map_location="cpu", weights_only=True).get("format") == OLD_HEADS_FORMAT:
            raise GalclipError(
                f"{old}: was written by galclip 0.1, whose runs cannot be resumed by this version; "
                "start without --resume (its heads still load for index, search and evaluate)"
            )
        raise GalclipError(f"{path}: nothing to resume; run without --resume")
    state = read_torch_file(path, "start without --resume")
    if state.get("format") != STATE_FORMAT:
        raise GalclipError(f"{path}: not a galclip training state; start without --resume")
    if state.get("store_fingerprint") != fingerprint:
        raise GalclipError(
            f"{path}: was trained on another store (fingerprint {state.get('store_fingerprint')}, "
            f"this store {fingerprint}); cannot resume"
        )
    if len(state["configs"]) != len(configs):
        raise GalclipError(
            f"{path}: holds {len(state['configs'])} configuration(s), this run has {len(configs)}; cannot resume"
        )
    for old, config in zip(state["configs"], configs):
        diff = _config_diff(old, asdict(config))
        if diff:
            raise GalclipError(
                f"{path}: cannot resume with other settings: "
                + ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in diff.items())
            )
    if (state["device_type"], state["n_train"], state["n_val"]) != (device_type, n_train, n_val):
        raise GalclipError(
            f"{path}: the run was on {state['device_type']} with {state['n_train']} train / {state['n_val']} "
            f"validation pairs; this session has {device_type} and {n_train} / {n_val}: resuming would not "
            "reproduce the run"
        )
    return state


def _config_diff(old: dict, new: dict) -> dict[str, tuple]:
    """Settings that differ between two ``asdict(HeadConfig)`` (the device may change)."""
    norm = lambda d: {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in d.items() if k != "device"}
    old, new = norm(old), norm(new)
    return {k: (old.get(k), new[k]) for k in new if old.get(k) != new[k]}
