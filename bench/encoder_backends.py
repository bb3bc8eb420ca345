"""Candidate inference backends for the frozen encoders, measured against fp32 GEMM in one run (issue 24's survey).

    python bench/encoder_backends.py [--batch 32] [--threads 2] [--out bench/out/encoder_backends.json]

Each candidate runs the same seeded-random encoder on the same batch; it is reported with its FLOP rate (torch's FLOP
counter of the eager model, 2 per multiply-add), its ratio to the 2048^3 fp32 GEMM rate of the same run, and its
largest difference from the eager float32 features relative to their largest magnitude: the measurement the choice
of galclip's ``fused`` backend rested on, with that backend last.

- image: eager channels-last (today's); ``torch.fx`` conv-BN folding; TorchScript trace + freeze +
  ``optimize_for_inference`` (oneDNN fusions; deprecated API, warns).
- spectrum: eager (today's); TorchScript as above; "pool first": each block's max-pool moved before its InstanceNorm
  and PReLU (both monotone non-decreasing per channel when the PReLU slopes are >= 0, so the max commutes with them),
  with the first block's statistics computed exactly from the input's 5x5 window moments (float64) instead of from
  its 128 x 7781 output.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from extract import encoder_rate, flops_per_item, gemm_gflops


def image_candidates(trunk, x):
    from torch.fx.experimental import optimization

    yield "eager channels-last", trunk.to(memory_format=torch.channels_last)
    yield "fx conv-BN folded", optimization.fuse(trunk.eval()).to(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(trunk.eval(), x)))
    yield "torchscript freeze + optimize_for_inference", traced
    from galclip.extract.backends import image_forward

    yield "fused (galclip --backend fused)", image_forward(trunk, "fused", x.shape[-1])


def _norm_act(x, var, mean, block):
    return F.prelu((x - mean) * torch.rsqrt(var + block[1].eps), block[2].weight)


def pool_first(enc):
    """Spender's features with each max-pool before its norm and PReLU; block 1's statistics from input moments."""
    conv1 = enc.conv1[0]
    w, b = conv1.weight[:, 0, :].double(), conv1.bias.double()  # (128, 5), (128,)
    k = w.shape[1]

    def features(y: torch.Tensor) -> torch.Tensor:
        windows = F.pad(y, (k // 2, k // 2)).unfold(1, k, 1).double()  # (B, L, 5): the conv's inputs
        s = windows.mean(1)  # (B, 5)
        cov = torch.einsum("blk,blj->bkj", windows, windows) / windows.shape[1] - s[:, :, None] * s[:, None, :]
        mean = (s @ w.T + b)[:, :, None].float()  # (B, 128, 1)
        var = torch.einsum("ck,bkj,cj->bc", w, cov, w)[:, :, None].clamp_min(0).float()
        x = _norm_act(enc.pool1(conv1(y.unsqueeze(1))), var, mean, enc.conv1)
        x = enc.conv2[0](x)
        var, mean = torch.var_mean(x, dim=2, keepdim=True, unbiased=False)
        x = _norm_act(enc.pool2(x), var, mean, enc.conv2)
        x = enc.conv3[0](x)
        var, mean = torch.var_mean(x, dim=2, keepdim=True, unbiased=False)
        h, a = _norm_act(x, var, mean, enc.conv3).split(enc.n_feature, 1)
        return (h * torch.softmax(a, -1)).sum(-1)

    return features


def spectrum_candidates(enc, y):
    yield "eager", enc.features

    class Features(torch.nn.Module):
        def __init__(self, e):
            super().__init__()
            self.e = e

        def forward(self, y):
            return self.e.features(y)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(Features(enc).eval(), y)))
    yield "torchscript freeze + optimize_for_inference", traced
    if min(float(blk[2].weight.min()) for blk in (enc.conv1, enc.conv2, enc.conv3)) >= 0:
        yield "pool first, block-1 moments", pool_first(enc)
    from galclip.extract.backends import FusedSpender

    yield "fused (galclip --backend fused: + FFT conv2/3)", FusedSpender(enc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "encoder_backends.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from galclip.data.preprocess import zscore_spectra
    from galclip.extract.image_encoder import build_image_encoder
    from galclip.extract.spectrum_encoder import build_spectrum_encoder

    torch.manual_seed(0)
    device = torch.device("cpu")
    gemm = gemm_gflops(device)
    result = {"gemm_gflops": gemm, "batch": args.batch, "threads": torch.get_num_threads(), "image": {}, "spectrum": {}}
    print(f"GEMM {gemm:.0f} GFLOP/s (2048^3 fp32), batch {args.batch}, {torch.get_num_threads()} threads")
    trunk, _ = build_image_encoder(None, 0)
    x = torch.rand(args.batch, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    enc = build_spectrum_encoder(None, 0)
    y = zscore_spectra(torch.randn(args.batch, 7781) + 3)
    for name, model, batch, candidates in (
        ("image", trunk, x, image_candidates(trunk, x)),
        ("spectrum", enc.features, y, spectrum_candidates(enc, y)),
    ):
        flops = flops_per_item(model, batch)
        with torch.inference_mode():
            ref = model(batch)
        for label, fn in candidates:
            with torch.inference_mode():
                diff = float((fn(batch) - ref).abs().max() / ref.abs().max())
            rate = encoder_rate(fn, batch, flops)
            result[name][label] = {"gflops": rate, "ratio_to_gemm": rate / gemm, "max_rel_diff": diff}
            print(f"{name:8s} {label:45s} {rate:6.1f} GFLOP/s  {rate / gemm:.2f} of GEMM  max |d| {diff:.1e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
