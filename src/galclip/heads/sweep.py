"""Vectorised sweeps: K head configurations trained in one pass as batched matrix products.

The K image heads (and K spectrum heads) of configurations with the same layer widths are
stacked into (K, out, in) weight tensors and run with ``torch.baddbmm``; every configuration has
its own Adam state, learning rate, weight decay, temperature, augmented-view probability and
ReduceLROnPlateau schedule, all vectorised over K. Every configuration sees the same batches
(one seeded order) and starts from the same seeded initialisation as a separate
``train_heads`` run with that seed, so each reproduces its separate run to float tolerance —
at a fraction of the cost, since K small GEMMs batch into one.
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
import torch
import torch.nn.functional as F

from galclip.atomic import atomic_path
from galclip.config import HeadConfig
from galclip.errors import GalclipError
from galclip.heads.data import FeatureSet, load_features, to_device
from galclip.heads.models import CLIPHeads
from galclip.heads.train import CHECKPOINT_FORMAT, sample_views, save_atomic, write_json_atomic
from galclip.provenance import resolve_device
from galclip.store import FeatureStore

logger = logging.getLogger(__name__)

SWEEPABLE = {"lr": float, "tau": float, "weight_decay": float, "aug_prob": float,
             "image_hidden": int, "spectrum_hidden": lambda s: tuple(int(x) for x in s.split("x"))}
PER_CONFIG = ("lr", "tau", "weight_decay", "aug_prob")  # may differ inside one vectorised group


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["lr=1e-4,3e-4", "tau=0.1"]`` -> {"lr": [1e-4, 3e-4], "tau": [0.1]} (spectrum_hidden as 256x128x128)."""
    grid: dict[str, list] = {}
    for item in items:
        name, _, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if name not in SWEEPABLE or not values:
            raise GalclipError(f"--grid {item!r}: use NAME=v1,v2,... with NAME one of {sorted(SWEEPABLE)}")
        try:
            grid[name] = [SWEEPABLE[name](v.strip()) for v in values.split(",")]
        except ValueError as err:
            raise GalclipError(f"--grid {item!r}: {err}") from err
    return grid


def expand_grid(base: HeadConfig, grid: dict[str, list]) -> list[HeadConfig]:
    """Cartesian product of the grid as ``dataclasses.replace(base, ...)`` configurations."""
    names = list(grid)
    try:
        return [dataclasses.replace(base, **dict(zip(names, values))) for values in itertools.product(*(grid[n] for n in names))]
    except ValueError as err:
        raise GalclipError(f"--grid: {err}") from err


class StackedMLP:
    """K MLPs of the same widths as stacked tensors: x (K, B, in) -> (K, B, out), ReLU between layers."""

    def __init__(self, heads: list[torch.nn.Sequential], device: torch.device):
        layers = [[m for m in h if isinstance(m, torch.nn.Linear)] for h in heads]
        self.weights = [torch.stack([hl[i].weight.detach() for hl in layers]).to(device).requires_grad_() for i in range(len(layers[0]))]
        self.biases = [torch.stack([hl[i].bias.detach() for hl in layers]).to(device).requires_grad_() for i in range(len(layers[0]))]

    def params(self) -> list[torch.Tensor]:
        return [p for pair in zip(self.weights, self.biases) for p in pair]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in) shared by all K configurations, or (K, B, in) -> (K, B, out)."""
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if x.dim() == 2:  # shared input: one (B, in) @ (in, K*out) GEMM instead of K small ones
                k, out, n_in = w.shape
                x = (x @ w.reshape(k * out, n_in).T).view(len(x), k, out).transpose(0, 1) + b[:, None, :]
            else:
                x = torch.baddbmm(b[:, None, :], x, w.transpose(1, 2))
            if i < len(self.weights) - 1:
                x = torch.relu(x)
        return x


def stacked_info_nce(zx: torch.Tensor, zy: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE per configuration: (K, B, D), (K, B, D), tau (K,) -> (K,) losses (eq. 1)."""
    k, b, _ = zx.shape
    logits = torch.bmm(F.normalize(zx, dim=-1), F.normalize(zy, dim=-1).transpose(1, 2)) / tau[:, None, None]
    target = torch.arange(b, device=zx.device).repeat(k)
    rows = F.cross_entropy(logits.reshape(k * b, b), target, reduction="none").view(k, b).mean(1)
    cols = F.cross_entropy(logits.transpose(1, 2).reshape(k * b, b), target, reduction="none").view(k, b).mean(1)
    return 0.5 * (rows + cols)


class StackedAdam:
    """torch.optim.Adam (L2 weight decay, no amsgrad) vectorised over K configurations."""

    def __init__(self, params: list[torch.Tensor], lr: torch.Tensor, weight_decay: torch.Tensor,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.wd, self.betas, self.eps = params, lr.clone(), weight_decay, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.step_count = 0

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        b1, b2 = self.betas
        bc1, bc2 = 1 - b1**self.step_count, 1 - b2**self.step_count
        step_scale = bc1 / self.lr  # (K,): torch's step size lr / bc1, inverted to scale the denominator
        for p, m, v in zip(self.params, self.m, self.v):
            shape = (-1,) + (1,) * (p.dim() - 1)
            g = p.grad
            if bool((self.wd != 0).any()):
                g = g.add(p * self.wd.view(shape))
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = v.sqrt().div_(math.sqrt(bc2)).add_(self.eps).mul_(step_scale.view(shape))
            p.addcdiv_(m, denom, value=-1.0)
            p.grad = None


class StackedPlateau:
    """ReduceLROnPlateau(mode="min", threshold=1e-4 relative) vectorised over K learning rates."""

    def __init__(self, opt: StackedAdam, factor: float, patience: int, threshold: float = 1e-4, eps: float = 1e-8):
        self.opt, self.factor, self.patience, self.threshold, self.eps = opt, factor, patience, threshold, eps
        k = len(opt.lr)
        self.best = torch.full((k,), math.inf, dtype=torch.float64)
        self.bad = torch.zeros(k, dtype=torch.long)

    def step(self, metrics: torch.Tensor) -> None:
        metrics = metrics.double()
        better = metrics < self.best * (1 - self.threshold)
        self.best = torch.where(better, metrics, self.best)
        self.bad = torch.where(better, torch.zeros_like(self.bad), self.bad + 1)
        reduce = self.bad > self.patience
        old = self.opt.lr.double().cpu()
        new = old * self.factor
        apply = reduce & ((old - new) > self.eps)
        self.opt.lr.copy_(torch.where(apply, new, old).to(self.opt.lr))
        self.bad = torch.where(reduce, torch.zeros_like(self.bad), self.bad)


def _quick_r2(zi: np.ndarray, zs: np.ndarray, labels: np.ndarray, k: int = 16) -> float:
    """Cross-modal zero-shot R² (image query, spectrum neighbours) on a fixed 50/50 split: NaN if too few."""
    from sklearn.metrics import r2_score
    from sklearn.neighbors import KNeighborsRegressor

    ok = np.flatnonzero(np.isfinite(labels))
    tr, te = ok[::2], ok[1::2]
    if len(tr) <= k or len(te) < 2:
        return float("nan")
    norm = lambda z: z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)  # noqa: E731
    pred = KNeighborsRegressor(k, weights="distance").fit(norm(zs[tr]), labels[tr]).predict(norm(zi[te]))
    return float(r2_score(labels[te], pred))


def _train_group(configs: list[HeadConfig], data: dict, train: np.ndarray, val: np.ndarray, device: torch.device,
                 fingerprint: str, fc_state: dict | None) -> list[dict]:
    """Train configurations that share layer widths in one vectorised pass; one result dict each."""
    base = configs[0]
    k = len(configs)
    heads = []
    for cfg in configs:  # same seeded initialisation as a separate run of each configuration
        torch.manual_seed(cfg.seed)
        heads.append(CLIPHeads.from_config(cfg))
    template = heads[0]
    if base.standardise:
        template.image.norm.fit(data["image_features"][train])
        template.spectrum.norm.fit(data["spectrum_features"][train])
    for h in heads:
        h.image.norm.load_state_dict(template.image.norm.state_dict())
        h.spectrum.norm.load_state_dict(template.spectrum.norm.state_dict())
        if fc_state is not None:
            h.load_moco_fc(fc_state)  # after the norm, as train_heads does
    norm_i, norm_s = template.image.norm.to(device), template.spectrum.norm.to(device)
    img, spec = StackedMLP([h.image.proj for h in heads], device), StackedMLP([h.spectrum.proj for h in heads], device)
    as_k = lambda name: torch.tensor([getattr(c, name) for c in configs], dtype=torch.float32, device=device)  # noqa: E731
    tau, aug_prob = as_k("tau").clamp_min(base.tau_min), as_k("aug_prob")  # τ clamped as CLIPHeads.tau() does
    opt = StackedAdam(img.params() + spec.params(), as_k("lr"), as_k("weight_decay"))
    sched = StackedPlateau(opt, base.lr_factor, base.lr_patience)
    use_aug = bool((aug_prob > 0).any()) and "image_features_aug" in data
    tr_set, va_set = to_device(data, train, device, use_aug), to_device(data, val, device, False)
    n_views = tr_set.image_aug.shape[1] if tr_set.image_aug is not None else 0
    gen = torch.Generator().manual_seed(base.seed)
    best_loss = torch.full((k,), math.inf, dtype=torch.float64)
    best_epoch = torch.full((k,), -1, dtype=torch.long)
    best_params = [p.detach().clone() for p in opt.params]
    history: list[list[dict]] = [[] for _ in range(k)]
    stopped = torch.zeros(k, dtype=torch.bool)
    diverged_at = torch.full((k,), -1, dtype=torch.long)

    def forward(fs: FeatureSet, idx: torch.Tensor, draws: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Stacked embeddings (K, B, 128) x 2; ``draws`` = (uniforms, view indices) of sample_views."""
        xi, xs = fs.batch(idx)
        xi = norm_i(xi)
        if draws is not None:  # per configuration: swap in the sampled augmented view where u < aug_prob
            u, view = draws
            use = u[None, :] < aug_prob[:, None]  # (K, B)
            if bool((use == use[:1]).all()):  # every configuration takes the same views: input stays shared
                xi = torch.where(use[0][:, None], norm_i(fs.image_aug[idx, view].float()), xi)
            else:
                xi = torch.where(use[..., None], norm_i(fs.image_aug[idx, view].float()), xi.expand(k, -1, -1))
        return img(xi), spec(norm_s(xs))

    n = len(tr_set)
    for epoch in range(base.epochs):
        te = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(device)
        total, seen = torch.zeros(k, device=device), 0
        for lo in range(0, n, base.batch_size):
            idx = perm[lo:lo + base.batch_size]
            if len(idx) < 2:
                continue
            draws = sample_views(gen, len(idx), n_views, device) if n_views else None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):  # as train_heads
                zi, zs = forward(tr_set, idx, draws)
            losses = stacked_info_nce(zi.float(), zs.float(), tau)
            losses.sum().backward()  # configurations share no parameter: each gets its own gradient
            opt.step()
            total += losses.detach() * len(idx)
            seen += len(idx)
        with torch.no_grad():
            vtot, vseen = torch.zeros(k, device=device), 0
            for lo in range(0, len(va_set), base.batch_size):
                idx = torch.arange(lo, min(lo + base.batch_size, len(va_set)), device=device)
                if len(idx) < 2:
                    continue
                vtot += stacked_info_nce(*forward(va_set, idx), tau) * len(idx)
                vseen += len(idx)
        train_loss = (total / max(seen, 1)).double().cpu()
        val_loss = (vtot / max(vseen, 1)).double().cpu()
        bad = ~(torch.isfinite(val_loss) & torch.isfinite(train_loss)) & ~stopped
        for i in torch.nonzero(bad).flatten().tolist():  # only that configuration stops; the others go on
            diverged_at[i] = epoch
            kept = f"keeps its best epoch {int(best_epoch[i])}" if best_epoch[i] >= 0 else "had no good epoch"
            logger.warning("sweep: configuration %d (lr %g, tau %g, weight_decay %g) diverged at epoch %d; it %s "
                           "and is left out of the best-configuration choice", i, configs[i].lr,
                           configs[i].tau, configs[i].weight_decay, epoch, kept)
        stopped |= bad
        logged_val_loss = val_loss
        val_loss = torch.where(stopped, torch.full_like(val_loss, math.inf), val_loss)  # NaN never reaches the scheduler
        sched.step(val_loss)
        better = (val_loss < best_loss) & ~stopped
        for i in torch.nonzero(better).flatten().tolist():
            for bp, p in zip(best_params, opt.params):
                bp[i] = p.detach()[i]
        best_loss = torch.where(better, val_loss, best_loss)
        best_epoch = torch.where(better, torch.full_like(best_epoch, epoch), best_epoch)
        seconds = time.perf_counter() - te
        for i in range(k):
            if not stopped[i]:
                history[i].append({"epoch": epoch, "train_loss": float(train_loss[i]), "val_loss": float(val_loss[i]),
                                   "lr": float(opt.lr[i]), "tau": float(tau[i]), "seconds": seconds})
        if base.early_stopping is not None:
            stopped |= (epoch - best_epoch) >= base.early_stopping
        logger.info("sweep epoch %3d: val loss %s  %.2fs", epoch, " ".join("-" if st else f"{v:.3f}" for v, st in zip(logged_val_loss.tolist(), stopped.tolist())), seconds)
        if stopped.all():
            break

    results = []
    for i, cfg in enumerate(configs):
        h = CLIPHeads.from_config(cfg)
        h.image.norm.load_state_dict(norm_i.state_dict())
        h.spectrum.norm.load_state_dict(norm_s.state_dict())
        best = [bp[i].cpu() for bp in best_params]
        n_img = 2 * len(img.weights)
        for j, lin in enumerate(m for m in h.image.proj if isinstance(m, torch.nn.Linear)):
            lin.weight.data.copy_(best[2 * j]), lin.bias.data.copy_(best[2 * j + 1])
        for j, lin in enumerate(m for m in h.spectrum.proj if isinstance(m, torch.nn.Linear)):
            lin.weight.data.copy_(best[n_img + 2 * j]), lin.bias.data.copy_(best[n_img + 2 * j + 1])
        zi, zs = h.embed(data["image_features"][val], data["spectrum_features"][val])
        results.append({
            "config": cfg, "heads": h, "history": history[i], "best_epoch": int(best_epoch[i]),
            "best_val_loss": float(best_loss[i]), "final_val_loss": history[i][-1]["val_loss"] if history[i] else math.nan,
            "epochs_run": len(history[i]), "fingerprint": fingerprint,
            "diverged_at_epoch": int(diverged_at[i]) if diverged_at[i] >= 0 else None,
            "r2_cross_redshift": _quick_r2(zi, zs, data["label_redshift"][val]),
            "r2_cross_log_mstar": _quick_r2(zi, zs, data["label_log_mstar"][val]),
        })
    return results


def run_sweep(store_path: str | Path, out_dir: str | Path, base: HeadConfig, grid: dict[str, list],
              allow_partial: bool = False) -> list[dict]:
    """Train every configuration of the grid, vectorised per group of equal layer widths.

    Writes ``sweep.csv``, ``sweep.json``, ``sweep_val_loss.png`` and the best configuration's
    ``best/heads.pt`` (loadable by ``galclip evaluate``) into ``out_dir``; returns one row per config.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    configs = expand_grid(base, grid)
    if any(c.learn_tau for c in configs):
        raise GalclipError("sweeps train fixed temperatures; sweep τ with --grid tau=... instead of --learn-tau")
    store = FeatureStore.open(store_path)
    data = load_features(store, allow_partial)
    train, val = np.flatnonzero(data["split"] == 0), np.flatnonzero(data["split"] == 1)
    if len(train) < 2 or len(val) < 2:
        raise GalclipError(f"{store_path}: needs at least 2 train and 2 validation pairs")
    device = resolve_device(base.device)
    stored_fc = store.moco_fc()
    groups: dict[tuple, list[HeadConfig]] = {}
    for cfg in configs:  # a vectorised group shares widths, and whether it draws augmented views at all
        groups.setdefault((cfg.image_sizes, cfg.spectrum_sizes, cfg.aug_prob > 0), []).append(cfg)
    results = []
    for sizes, group in groups.items():
        fc = ({k: torch.from_numpy(v) for k, v in stored_fc.items()}
              if stored_fc is not None and sizes[0] == (2048, 2048, 128) else None)
        logger.info("sweep: %d configuration(s) with widths %s, vectorised", len(group), sizes)
        results += _train_group(group, data, train, val, device, store.fingerprint(), fc)
    elapsed = time.perf_counter() - t0
    if all(r["diverged_at_epoch"] is not None for r in results):
        raise GalclipError(f"sweep: all {len(results)} configurations diverged; nothing was written to {out}. "
                           "Lower the learning rates or raise the temperatures of the grid")

    rows = []
    for r in results:
        row = {name: getattr(r["config"], name) for name in SWEEPABLE}
        row["spectrum_hidden"] = "x".join(map(str, row["spectrum_hidden"]))
        row.update({k: r[k] for k in ("best_val_loss", "final_val_loss", "best_epoch", "epochs_run",
                                      "r2_cross_redshift", "r2_cross_log_mstar", "diverged_at_epoch")})
        row = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
        rows.append(row)
    # lowest validation InfoNCE among configurations that did not diverge
    best_i = int(np.argmin([math.inf if r["diverged_at_epoch"] is not None else r["best_val_loss"] for r in results]))
    with atomic_path(out / "sweep.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_json_atomic({"seconds": elapsed, "n_configs": len(rows), "best": best_i, "grid": grid,
                       "base": dataclasses.asdict(base), "results": rows,
                       "histories": [r["history"] for r in results]}, out / "sweep.json")
    _plot_sweep(results, out / "sweep_val_loss.png")
    best = results[best_i]
    (out / "best").mkdir(exist_ok=True)
    save_atomic({"format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(best["config"]), "store_fingerprint": best["fingerprint"],
                 "store_path": str(Path(store_path).resolve()), "state_dict": best["heads"].state_dict(),
                 "best_epoch": best["best_epoch"], "best_val_loss": best["best_val_loss"], "epoch": best["epochs_run"] - 1,
                 "history": best["history"], "finished": True, "stop_reason": "sweep", "n_train": len(train), "n_val": len(val)},
                out / "best" / "heads.pt")
    logger.info("sweep: %d configurations in %.1f s; best %s (val loss %.4f)", len(rows), elapsed, rows[best_i], best["best_val_loss"])
    return rows


def _plot_sweep(results: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from galclip.evaluate.plots import save_png

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for r in results:
        c = r["config"]
        ax.plot([h["val_loss"] for h in r["history"]], lw=1, label=f"lr {c.lr:g} τ {c.tau:g} wd {c.weight_decay:g} p {c.aug_prob:g}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation InfoNCE")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    save_png(fig, path, dpi=110)
