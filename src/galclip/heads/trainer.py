"""The one head trainer: K configurations trained together on the same batches.

The report's recipe for each configuration: batch 512, Adam, ReduceLROnPlateau(factor 0.5,
patience 5) on the validation loss, 80 epochs; the "validation" pairs are the *selection* split
(``galclip.split``), never the test pairs every reported number comes from. Features are
standardised in float32, live on the training device in fp16 and are cast per batch; each step may swap a
pair's clean image features for one of its stored augmented views (``aug_prob``), so augmentation costs
nothing. Per configuration the heads kept are those of the epoch with the lowest validation loss; a
configuration stops after ``early_stopping`` epochs without improvement, or when its loss stops being finite
(it keeps its best epoch and the others go on).

The K configurations share one pass over the data: one seeded batch order and one draw of
augmented views per step, the standardisation fitted once, each pair's features gathered and
cast once. Each configuration has its own heads (seeded as a separate run with its seed), its own
``torch.optim.Adam`` and ``ReduceLROnPlateau``, so configuration k computes exactly what a run
of that configuration alone computes. ``galclip heads`` is K = 1; ``galclip sweep`` is K > 1.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from galclip.config import HeadConfig
from galclip.heads.checkpoint import STATE_FORMAT, read_train_state, save_atomic
from galclip.heads.data import FeatureSet, TrainingData, sample_views
from galclip.heads.loss import info_nce
from galclip.heads.models import CLIPHeads, Standardise
from galclip.progress import progress as progress_bar

logger = logging.getLogger(__name__)

MOCO_FC_SIZES = (2048, 2048, 128)  # the Stein checkpoint's projection MLP; an image head of these widths starts from it


@dataclass
class ConfigRun:
    """One configuration's run: its heads now and at their best, optimiser, schedule and history."""

    config: HeadConfig
    heads: CLIPHeads
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    best_state: dict
    best_epoch: int = -1
    best_val_loss: float = math.inf
    history: list[dict] = field(default_factory=list)
    stop_reason: str | None = None  # None while it trains
    diverged: dict | None = None  # {"epoch", "train_loss", "val_loss"} when its loss stopped being finite

    @property
    def active(self) -> bool:
        return self.stop_reason is None


@dataclass
class TrainResult:
    """What the trainer returns for one configuration; ``heads`` hold the best epoch's weights (CPU)."""

    config: HeadConfig
    heads: CLIPHeads
    history: list[dict]
    best_epoch: int
    best_val_loss: float
    stop_reason: str
    diverged: dict | None
    image_head_init: str
    epochs_this_session: int = 0  # epochs trained by this call (the rest came from a resume state)

    @property
    def diverged_at_epoch(self) -> int | None:
        return None if self.diverged is None else self.diverged["epoch"]


def _new_run(
    config: HeadConfig, norms: tuple[torch.nn.Module, torch.nn.Module], fc_state: dict | None, device: torch.device
) -> ConfigRun:
    torch.manual_seed(config.seed)  # the same initialisation as a separate run with this seed
    heads = CLIPHeads.from_config(config)
    heads.image.norm.load_state_dict(norms[0].state_dict())
    heads.spectrum.norm.load_state_dict(norms[1].state_dict())
    if fc_state is not None:
        heads.load_moco_fc(fc_state)  # folds the standardisation in: the head starts as the pretrained MLP
    heads.to(device)
    decayed = [p for name, p in heads.named_parameters() if name != "log_inv_tau"]
    groups = [{"params": decayed}] + (
        [{"params": [heads.log_inv_tau], "weight_decay": 0.0}] if config.learn_tau else []
    )
    opt = torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay, fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=config.lr_factor, patience=config.lr_patience
    )
    return ConfigRun(config, heads, opt, sched, copy.deepcopy(heads.state_dict()))


def _check_group(configs: list[HeadConfig]) -> None:
    base = configs[0]
    shared = ("epochs", "batch_size", "early_stopping", "lr_factor", "lr_patience", "standardise", "embed_dim")
    for cfg in configs[1:]:
        differ = [name for name in shared if getattr(cfg, name) != getattr(base, name)]
        if differ or cfg.image_sizes != base.image_sizes or cfg.spectrum_sizes != base.spectrum_sizes:
            raise ValueError(f"configurations trained together must share {differ or 'layer widths'}")
        if (cfg.aug_prob > 0) != (base.aug_prob > 0):
            raise ValueError("configurations trained together either all draw augmented views or none does")


@torch.no_grad()
def _validation_losses(runs: list[ConfigRun], norm_i, norm_s, feats: FeatureSet, batch_size: int) -> list[float]:
    """Mean InfoNCE of each active run over fixed consecutive batches of clean features (the validation protocol)."""
    totals, count = [0.0] * len(runs), 0
    for run in runs:
        run.heads.eval()
    for lo in range(0, len(feats), batch_size):
        idx = torch.arange(lo, min(lo + batch_size, len(feats)), device=feats.image.device)
        if len(idx) < 2:
            continue
        xi, xs = feats.batch(idx)
        xi, xs = norm_i(xi), norm_s(xs)
        for j, run in enumerate(runs):
            totals[j] += float(info_nce(run.heads.image.proj(xi), run.heads.spectrum.proj(xs), run.heads.tau())) * len(
                idx
            )
        count += len(idx)
    for run in runs:
        run.heads.train()
    return [t / max(count, 1) for t in totals]


def _train_epoch(
    runs: list[ConfigRun],
    norm_i,
    norm_s,
    feats: FeatureSet,
    batch_size: int,
    n_views: int,
    gen: torch.Generator,
    device: torch.device,
) -> list[float]:
    """One epoch over the training pairs for every active run; returns each one's mean training loss."""
    n = len(feats)
    perm = torch.randperm(n, generator=gen).to(device)
    totals, seen = [torch.zeros((), device=device) for _ in runs], 0
    aug_probs = torch.tensor([run.config.aug_prob for run in runs])
    for lo in range(0, n, batch_size):
        idx = perm[lo : lo + batch_size]
        if len(idx) < 2:
            continue
        xi_clean, xs = feats.batch(idx)
        xi_clean, xs = norm_i(xi_clean), norm_s(xs)
        inputs: dict[float, torch.Tensor] = {}
        if n_views:
            u, view = sample_views(gen, len(idx), n_views, device)
            xi_aug = norm_i(feats.image_aug[idx, view].float())
            for p in aug_probs.unique().tolist():  # configurations with the same aug_prob share their input
                inputs[p] = torch.where((u < p)[:, None], xi_aug, xi_clean)
        for run, total in zip(runs, totals):  # configurations share no parameter: one step each, in turn
            xi = inputs.get(run.config.aug_prob, xi_clean)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):  # never on CPU
                zi, zs = run.heads.image.proj(xi), run.heads.spectrum.proj(xs)
            loss = info_nce(zi.float(), zs.float(), run.heads.tau())
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)  # frees its gradients and graph before the next configuration's
            total += loss.detach() * len(idx)
        seen += len(idx)
    return [float(t) / max(seen, 1) for t in totals]


def _end_epoch(run: ConfigRun, epoch: int, train_loss: float, val_loss: float, seconds: float) -> None:
    """Record one epoch of one run: divergence, schedule, history, best weights, early stopping."""
    if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
        run.diverged = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss}
        run.stop_reason = f"diverged at epoch {epoch}"
        return
    run.scheduler.step(val_loss)
    run.history.append(
        {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": run.optimizer.param_groups[0]["lr"],
            "tau": float(run.heads.tau().detach()),
            "seconds": seconds,
        }
    )
    if val_loss < run.best_val_loss:
        run.best_val_loss, run.best_epoch, run.best_state = val_loss, epoch, copy.deepcopy(run.heads.state_dict())
    stop = run.config.early_stopping
    if epoch == run.config.epochs - 1:
        run.stop_reason = "epochs"
    elif stop is not None and epoch - run.best_epoch >= stop:
        run.stop_reason = f"no validation improvement for {stop} epochs"


def _state(
    runs: list[ConfigRun],
    epoch: int,
    gen: torch.Generator,
    fingerprint: str,
    n_train: int,
    n_val: int,
    device: torch.device,
) -> dict:
    return {
        "format": STATE_FORMAT,
        "configs": [asdict(r.config) for r in runs],
        "store_fingerprint": fingerprint,
        "n_train": n_train,
        "n_val": n_val,
        "device_type": device.type,
        "epoch": epoch,
        "finished": not any(r.active for r in runs),
        "generator": gen.get_state(),
        "runs": [
            {
                "last_state_dict": r.heads.state_dict(),
                "optimizer": r.optimizer.state_dict(),
                "scheduler": r.scheduler.state_dict(),
                "best_state_dict": r.best_state,
                "best_epoch": r.best_epoch,
                "best_val_loss": r.best_val_loss,
                "history": r.history,
                "stop_reason": r.stop_reason,
                "diverged": r.diverged,
            }
            for r in runs
        ],
    }


def _restore(runs: list[ConfigRun], state: dict, gen: torch.Generator) -> int:
    """Load a resume state into the runs; returns the first epoch still to train."""
    for run, saved in zip(runs, state["runs"]):
        run.heads.load_state_dict(saved["last_state_dict"])
        run.optimizer.load_state_dict(saved["optimizer"])
        run.scheduler.load_state_dict(saved["scheduler"])
        run.best_state, run.best_epoch, run.best_val_loss = (
            saved["best_state_dict"],
            saved["best_epoch"],
            saved["best_val_loss"],
        )
        run.history, run.stop_reason, run.diverged = saved["history"], saved["stop_reason"], saved["diverged"]
    gen.set_state(state["generator"].cpu())
    return state["epoch"] + 1


def train_configurations(
    configs: list[HeadConfig],
    data: TrainingData,
    device: torch.device,
    fingerprint: str,
    fc_state: dict[str, torch.Tensor] | None = None,
    state_path: Path | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    desc: str = "heads",
    save_every_s: float = 0.0,
) -> tuple[list[TrainResult], bool]:
    """Train K configurations that share layer widths, batch size, epochs and schedule shape.

    ``data`` holds the store's splits (``load_training_data``). ``fc_state`` (the Stein projection MLP)
    starts image heads of widths 2048 -> 2048 -> 128. With ``state_path`` the resume state is written
    there after an epoch when ``save_every_s`` seconds have passed since the last write (0: every epoch), and always
    after the last epoch of this call; ``resume`` continues from it exactly. ``stop_after`` ends this session after
    that many epochs. Returns (one result per configuration, whether every configuration has finished).
    """
    _check_group(configs)
    base = configs[0]
    if base.image_sizes != MOCO_FC_SIZES:
        fc_state = None
    norms = (
        (Standardise(base.image_sizes[0]), Standardise(base.spectrum_sizes[0]))
        if base.standardise
        else (torch.nn.Identity(), torch.nn.Identity())
    )
    if base.standardise:  # the train split's statistics, the same in every configuration
        norms[0].set(*data.stats["image"])
        norms[1].set(*data.stats["spectrum"])
    runs = [_new_run(cfg, norms, fc_state, device) for cfg in configs]
    if fc_state is not None:
        logger.info("image head initialised from the Stein checkpoint's projection MLP")
    norm_i, norm_s = runs[0].heads.image.norm, runs[0].heads.spectrum.norm
    if data.standardised:  # the features were standardised in float32 before the fp16 cast; the heads keep the
        norm_i = norm_s = torch.nn.Identity()  # statistics as buffers, to standardise raw features at inference
    use_aug = base.aug_prob > 0 and data.train.image_aug is not None
    on_device = data.to(device)
    tr_set = on_device.train if use_aug else FeatureSet(on_device.train.image, on_device.train.spectrum, None)
    va_set = on_device.selection
    n_views = tr_set.image_aug.shape[1] if tr_set.image_aug is not None else 0
    n_train, n_val = len(tr_set), len(va_set)
    gen = torch.Generator().manual_seed(base.seed)
    start = 0
    if resume:
        state = read_train_state(state_path, configs, fingerprint, n_train, n_val, device.type)
        start = _restore(runs, state, gen)
        if state["finished"]:
            logger.info("%s: this run already finished; nothing to do", state_path)
        else:
            logger.info("resuming %s at epoch %d", state_path, start)

    bar = progress_bar(base.epochs, desc, "epoch", enabled=progress, initial=start)
    epochs_this_session = 0
    epoch = start - 1
    last_save, unsaved = time.perf_counter(), None
    for epoch in range(start, base.epochs):
        active = [r for r in runs if r.active]
        if not active:
            break
        t0 = time.perf_counter()
        train_losses = _train_epoch(active, norm_i, norm_s, tr_set, base.batch_size, n_views, gen, device)
        val_losses = _validation_losses(active, norm_i, norm_s, va_set, base.batch_size)
        seconds = time.perf_counter() - t0
        for run, tl, vl in zip(active, train_losses, val_losses):
            _end_epoch(run, epoch, tl, vl, seconds)
            if run.diverged:
                kept = f"keeps its best epoch {run.best_epoch}" if run.best_epoch >= 0 else "had no good epoch"
                logger.warning(
                    "configuration %d (lr %g, tau %g, weight_decay %g) diverged at epoch %d; it %s",
                    runs.index(run),
                    run.config.lr,
                    run.config.tau,
                    run.config.weight_decay,
                    epoch,
                    kept,
                )
        if len(runs) == 1 and runs[0].history and runs[0].history[-1]["epoch"] == epoch:
            h = runs[0].history[-1]
            logger.info(
                "epoch %3d: train %.4f  selection %.4f  lr %.2e  tau %.3f  %.2fs",
                epoch,
                h["train_loss"],
                h["val_loss"],
                h["lr"],
                h["tau"],
                h["seconds"],
            )
            bar.set_postfix(train=f"{h['train_loss']:.3f}", selection=f"{h['val_loss']:.3f}")
        elif len(runs) > 1:
            val_of = dict(zip(map(id, active), val_losses))
            logger.info(
                "epoch %3d: selection loss %s  %.2fs",
                epoch,
                " ".join(
                    f"{val_of[id(run)]:.3f}" if run.history and run.history[-1]["epoch"] == epoch else "-"
                    for run in runs
                ),
                seconds,
            )
        bar.update(1)
        epochs_this_session += 1
        if all(r.diverged for r in runs):
            if unsaved is not None:  # the last good epoch's state, kept in memory since the last write
                save_atomic(unsaved, state_path)
            break  # nothing good to save beyond the last epoch's state
        stopping = stop_after is not None and epochs_this_session >= stop_after and any(r.active for r in runs)
        last = stopping or not any(r.active for r in runs) or epoch == base.epochs - 1
        if state_path is not None:
            state = _state(runs, epoch, gen, fingerprint, n_train, n_val, device)
            if last or time.perf_counter() - last_save >= save_every_s:
                save_atomic(state, state_path)
                last_save, unsaved = time.perf_counter(), None
            else:  # a copy in memory (tens of MB) instead of a file write every epoch
                unsaved = copy.deepcopy(state)
        if stopping:
            logger.info("stopping after %d epochs as asked; continue with resume", epochs_this_session)
            break
    bar.close()
    finished = not any(r.active for r in runs)
    return [_result(run, fc_state, epochs_this_session) for run in runs], finished


def _result(run: ConfigRun, fc_state, epochs_this_session: int) -> TrainResult:
    heads = CLIPHeads.from_config(run.config)
    heads.load_state_dict({k: v.detach().cpu() for k, v in run.best_state.items()})
    return TrainResult(
        run.config,
        heads.eval(),
        run.history,
        run.best_epoch,
        run.best_val_loss,
        run.stop_reason or "stopped",
        run.diverged,
        "moco_fc" if fc_state is not None else "random",
        epochs_this_session,
    )
