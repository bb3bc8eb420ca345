"""The encoders' GPU settings, measured in one run (issue 24): fp32, channels-last, bf16 autocast, torch.compile
and CUDA graphs, each at the batch size its memory allows, and the pairs/s they give with K image variants.

    python bench/gpu_settings.py [--device cuda] [--variants 4] [--memory-fraction 0.6] [--out FILE.json]

A pair with K variants costs 1 + K image forwards and one spectrum forward, so pairs/s = 1 / ((1 + K) / images/s
+ 1 / spectra/s), printed against the >= 10k pairs/s goal. The batch is the largest power of two (up to 4096) whose
forward pass, scaled from a probe at 64, fits in ``--memory-fraction`` of the free GPU memory. Every setting's
features are compared with fp32 eager on the same batch (max |d| / max |eager|). On a CPU (``--device cpu``, for a
dry run) the GPU-only settings are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from extract import best_seconds

GOAL_PAIRS_PER_S = 10_000


def rate(fn, x: torch.Tensor, reps: int = 5) -> float:
    """Items per second of ``fn`` on batch ``x``, best of ``reps`` after two warm-ups."""
    return len(x) / best_seconds(fn, x, reps, warmups=2)


def batch_by_memory(fn, make, device: torch.device, fraction: float, cap: int = 4096) -> int:
    """The largest power-of-two batch whose forward pass fits in ``fraction`` of the free memory (probe at 64)."""
    if device.type != "cuda":
        return 64
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        fn(make(64))
    per_item = max(1, (torch.cuda.max_memory_allocated(device) - base) / 64)
    free, _ = torch.cuda.mem_get_info(device)
    batch = 64
    while batch * 2 <= cap and batch * 2 * per_item <= fraction * free:
        batch *= 2
    return batch


def settings(module: torch.nn.Module, device: torch.device, image: bool):
    """(name, forward) per setting; the forward returns float32 features."""

    def plain(x):
        return module(x).float()

    def channels_last(x):
        return module(x.contiguous(memory_format=torch.channels_last) if image else x).float()

    def bf16(x):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return channels_last(x)

    yield "fp32", plain
    if image:
        yield "fp32 channels-last", channels_last
    if device.type != "cuda":
        return
    yield "bf16 autocast" + (" channels-last" if image else ""), bf16
    compiled = torch.compile(bf16, mode="max-autotune-no-cudagraphs")
    yield "bf16 + torch.compile", compiled
    yield "bf16 + torch.compile + CUDA graphs", torch.compile(bf16, mode="max-autotune")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--variants", type=int, default=4)
    ap.add_argument("--memory-fraction", type=float, default=0.6)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "gpu_settings.json")
    args = ap.parse_args()
    from galclip.extract.image_encoder import build_image_encoder
    from galclip.extract.spectrum_encoder import build_spectrum_encoder

    device = torch.device(args.device)
    trunk = build_image_encoder(None, 0)[0].to(device)
    spectrum = build_spectrum_encoder(None, 0).to(device)

    class Features(torch.nn.Module):
        def forward(self, y):
            return spectrum.features(y)

    def seeded(draw, *shape):
        return lambda b: draw(b, *shape, generator=torch.Generator(device).manual_seed(0), device=device)

    encoders = {"image": (trunk, seeded(torch.rand, 3, 96, 96)), "spectrum": (Features(), seeded(torch.randn, 7781))}
    result: dict = {"device": str(device), "variants": args.variants, "goal_pairs_per_s": GOAL_PAIRS_PER_S}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    for name, (module, make) in encoders.items():
        result[name] = {}
        reference, probe = None, make(64)  # every setting's features on the same 64 inputs
        for label, fn in settings(module, device, name == "image"):
            try:
                batch = batch_by_memory(fn, make, device, args.memory_fraction)
                x = make(batch)
                with torch.inference_mode():
                    out = fn(probe)
                    reference = out if reference is None else reference
                    diff = float((out - reference).abs().max() / reference.abs().max())
                r = rate(fn, x)
            except Exception as err:
                print(f"{name:8s} {label:38s} FAILED: {type(err).__name__}: {str(err)[:120]}")
                result[name][label] = {"error": f"{type(err).__name__}: {err}"[:300]}
                continue
            result[name][label] = {"batch": batch, "items_per_s": r, "max_rel_diff": diff}
            print(f"{name:8s} {label:38s} batch {batch:5d}  {r:9.0f} /s  max |d| {diff:.1e}")
    best = {
        m: max((v for v in result[m].values() if "items_per_s" in v), key=lambda v: v["items_per_s"]) for m in encoders
    }
    pairs = 1 / ((1 + args.variants) / best["image"]["items_per_s"] + 1 / best["spectrum"]["items_per_s"])
    result["pairs_per_s"] = pairs
    verdict = "meets" if pairs >= GOAL_PAIRS_PER_S else "misses"
    print(f"best settings: {pairs:,.0f} pairs/s with K = {args.variants} ({verdict} the >= {GOAL_PAIRS_PER_S:,} goal)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
