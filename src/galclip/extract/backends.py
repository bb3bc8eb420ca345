"""How the frozen encoders run: ``eager`` (the modules as written) or ``fused`` (the same weights and arithmetic,
arranged for the CPU's oneDNN kernels).

- image, ``fused``: the ResNet-50 trunk traced, frozen (conv-BN folded into the convolutions) and passed through
  ``torch.jit.optimize_for_inference`` (oneDNN convolutions with their ReLU and residual adds fused).
- spectrum, ``fused``: Spender's features computed in a different order with the same result (:class:`FusedSpender`).

``fused`` is for CPUs: on a GPU the encoders run eager (cuDNN and bf16 autocast are the speed there), and the store
records ``eager``. Features of the two backends agree to :data:`FEATURE_TOLERANCE` of their largest magnitude
(pinned by tests); within one backend they are bitwise reproducible, so a store is only ever resumed with the
backend it began with (``preprocessing.compute.backend`` in its provenance; absent in older stores, which are eager).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from galclip.config import ENCODER_BACKENDS as BACKENDS
from galclip.config import check_backend

logger = logging.getLogger(__name__)
__all__ = ["BACKENDS", "FusedSpender", "image_forward", "resolve_backend", "spectrum_forward"]

FEATURE_TOLERANCE = 1e-4  # max |fused - eager| / max |eager| per batch of features
SPECTRA_PER_BLOCK = 4  # spectra per pass through Spender's first two blocks: their 6.4 MB conv2 output stays in cache
CONV2_FFT_BLOCK = 128  # conv2's overlap-save FFT length: 118 outputs per block, 65 frequencies


def resolve_backend(backend: str | None, device_type: str, compile_: bool = False) -> str:
    """The backend that runs: ``backend`` (None: ``fused``), or ``eager`` on GPUs and under ``torch.compile``."""
    check_backend(backend)
    if device_type != "cpu" or compile_:
        return "eager"
    return backend or "fused"


def image_forward(trunk: nn.Module, backend: str, crop: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """(B, 3, crop, crop) channels-last -> (B, 2048): the trunk itself (``eager``) or its frozen oneDNN graph."""
    if backend == "eager":
        return trunk
    example = torch.zeros(1, 3, crop, crop).contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.compile, which needs a compiler
        traced = torch.jit.trace(trunk.eval(), example, check_trace=False)  # a fixed graph: the check doubles the time
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


def spectrum_forward(encoder: nn.Module, backend: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """(B, L) z-scored spectra -> (B, 256): ``encoder.features`` (``eager``) or :class:`FusedSpender`."""
    return encoder.features if backend == "eager" else FusedSpender(encoder)


def _smooth_length(n: int) -> int:
    """The smallest m >= n whose only prime factors are 2, 3 and 5 (a fast FFT length)."""
    m = n
    while True:
        rest = m
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += 1


class FusedSpender(nn.Module):
    """Spender's attention features, (B, L) -> (B, 256), reordered for speed with the same arithmetic:

    - each max-pool runs before its InstanceNorm and PReLU. Per channel the norm is increasing and PReLU is
      increasing (slope >= 0) or V-shaped (slope < 0), so the window's largest output comes from the window's largest
      or smallest input: max(f(max x), f(min x)) is exact, and only a fifth (block 1) or an eleventh (block 2) of the
      values are normalised;
    - block 1's statistics come from the spectrum's 5 x 5 window moments in float64, not from its 128 x L output;
    - conv2 and conv3 (11 and 21 taps over 128 and 256 channels) by FFT (:meth:`_correlate`): a quarter of the
      direct convolutions' arithmetic, as complex matmuls;
    - blocks 1 and 2 run :data:`SPECTRA_PER_BLOCK` spectra at a time (their intermediates stay in cache); block 3
      runs on the whole batch.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self._kernel_spectra: dict[tuple[int, int], torch.Tensor] = {}  # (conv, FFT length) -> (F, C, O) conj.

    def _block1_stats(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance over wavelength of conv1's output, (B, 128) each, from the input's window moments."""
        conv = self.encoder.conv1[0]
        w, b = conv.weight[:, 0, :].double(), conv.bias.double()  # (128, k), (128,)
        k = w.shape[1]
        windows = F.pad(y, (k // 2, k // 2)).unfold(1, k, 1).double()  # (B, L, k): what each output sees
        mean_in = windows.mean(1)  # (B, k)
        cov = torch.einsum("blk,blj->bkj", windows, windows) / windows.shape[1] - mean_in[:, :, None] * mean_in[:, None]
        mean = mean_in @ w.T + b
        var = torch.einsum("ck,bkj,cj->bc", w, cov, w).clamp_min(0)
        return mean.float(), var.float()

    @staticmethod
    def _pooled_norm_act(x: torch.Tensor, pool: nn.MaxPool1d, mean, var, block: nn.Sequential) -> torch.Tensor:
        """PReLU(InstanceNorm(x)) max-pooled, (B, C, L) -> (B, C, L'), from the pooled extremes of x."""
        norm, act = block[1], block[2]
        scale = torch.rsqrt(var + norm.eps)[:, :, None]
        shift = (mean[:, :, None] * scale).neg()
        out = F.prelu(torch.addcmul(shift, pool(x), scale), act.weight)
        if bool((act.weight < 0).any()):  # a V-shaped PReLU: the window's smallest input may give its largest output
            lowest = pool(x.neg()).neg_()
            out = torch.maximum(out, F.prelu(torch.addcmul(shift, lowest, scale), act.weight))
        return out

    def _blocks12(self, y: torch.Tensor) -> torch.Tensor:
        """(b, L) -> (b, 256, L / 55): the first two blocks, pooled."""
        enc = self.encoder
        mean, var = self._block1_stats(y)
        x = self._pooled_norm_act(enc.conv1[0](y[:, None, :]), enc.pool1, mean, var, enc.conv1)
        x = self._correlate(x, enc.conv2[0], CONV2_FFT_BLOCK)  # (b, 256, L / 5)
        mean = x.mean(2)
        var = (x.square().mean(2) - mean.square()).clamp_min(0)
        return self._pooled_norm_act(x, enc.pool2, mean, var, enc.conv2).contiguous()

    def _correlate(self, x: torch.Tensor, conv: nn.Conv1d, block: int | None = None) -> torch.Tensor:
        """``conv(x)`` by FFT, (B, C, L) -> (B, O, L): overlap-save in blocks of ``block`` samples (None: one block
        over the whole length), the cross-correlation X(f) conj(W(f)) summed over input channels as one complex
        matmul per frequency. float32 FFTs: the error is ~1e-7 of the output's scale."""
        k, pad, length = conv.kernel_size[0], conv.padding[0], x.shape[-1]
        n = block or _smooth_length(length + k - 1)  # a linear correlation: no wrap-around into kept outputs
        step = n - (k - 1)  # kept outputs per block
        blocks = -(-length // step)
        key = (id(conv), n)
        if key not in self._kernel_spectra:
            self._kernel_spectra[key] = torch.fft.rfft(conv.weight, n=n).conj().permute(2, 1, 0).contiguous()
        kernel = self._kernel_spectra[key]  # (F, C, O)
        windows = F.pad(x, (pad, blocks * step + k - 1 - length - pad)).unfold(2, n, step)  # (B, C, blocks, n)
        spectra = torch.fft.rfft(windows)  # (B, C, blocks, F)
        b, c = x.shape[:2]
        spectra = spectra.permute(3, 0, 2, 1).reshape(-1, b * blocks, c)  # (F, B * blocks, C)
        product = torch.matmul(spectra, kernel).reshape(-1, b, blocks, kernel.shape[-1]).permute(1, 3, 2, 0)
        out = torch.fft.irfft(product, n=n)[..., :step].reshape(b, -1, blocks * step)[:, :, :length]
        return out + conv.bias[:, None]

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        if len(y) == 0:  # as eager: no spectra, no features
            return y.new_zeros(0, enc.n_feature)
        x = torch.cat([self._blocks12(y[i : i + SPECTRA_PER_BLOCK]) for i in range(0, len(y), SPECTRA_PER_BLOCK)])
        x = self._correlate(x, enc.conv3[0])
        var, mean = torch.var_mean(x, dim=2, keepdim=True, unbiased=False)
        x = F.prelu((x - mean) * torch.rsqrt(var + enc.conv3[1].eps), enc.conv3[2].weight)
        h, a = torch.split(x, [enc.n_feature, enc.n_feature], dim=1)
        return torch.sum(h * torch.softmax(a, dim=-1), dim=2)
