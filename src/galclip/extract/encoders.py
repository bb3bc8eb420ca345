"""Both frozen encoders on one device, with preprocessing and augmented views in front."""

from __future__ import annotations

import numpy as np
import torch

from galclip.config import ExtractConfig
from galclip.data.preprocess import grz_to_rgb, images_to_chw, preprocess_images, zscore_spectra
from galclip.extract.augment import augment_images, augment_spectra
from galclip.extract.backends import image_forward, resolve_backend, spectrum_forward
from galclip.extract.image_encoder import IMAGE_FEATURE_DIM, build_image_encoder
from galclip.extract.spectrum_encoder import SPECTRUM_FEATURE_DIM, build_spectrum_encoder


def feature_arrays(config: ExtractConfig) -> dict[str, tuple[int, ...]]:
    """The store's feature arrays for this configuration: name -> shape after the row axis."""
    arrays = {
        f"{m}_features": (dim,)
        for m, dim in (("image", IMAGE_FEATURE_DIM), ("spectrum", SPECTRUM_FEATURE_DIM))
        if m in config.modalities
    }
    if config.variants and "image" in config.modalities:
        arrays["image_features_aug"] = (config.variants, IMAGE_FEATURE_DIM)
    if config.spectrum_variants and "spectrum" in config.modalities:
        arrays["spectrum_features_aug"] = (config.spectrum_variants, SPECTRUM_FEATURE_DIM)
    return arrays


class Encoders:
    """The frozen encoders of ``config.modalities`` on one device, with preprocessing and augmented views in front."""

    def __init__(self, config: ExtractConfig, device: torch.device):
        self.config = config
        self.device = device
        self.fc_state = None
        self.backend = resolve_backend(config.backend, device.type, config.compile)
        if "image" in config.modalities:
            trunk, self.fc_state = build_image_encoder(config.image_weights, config.seed)
            self.image = image_forward(trunk.to(device, memory_format=torch.channels_last), self.backend, config.crop)
            if config.compile:
                self.image = torch.compile(self.image)
        if "spectrum" in config.modalities:
            self.spectrum = build_spectrum_encoder(config.spectrum_weights, config.seed).to(device)
            self.spectrum_features = spectrum_forward(self.spectrum, self.backend)
            if config.compile:
                self.spectrum_features = torch.compile(self.spectrum_features)
        self.autocast = device.type == "cuda"  # bf16 only on GPUs: ~100x slower on AVX2 CPUs

    def _image_features(self, rgb: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.image(rgb.contiguous(memory_format=torch.channels_last)).float()

    def _spectrum_features(self, spectra: torch.Tensor, good: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.spectrum_features(zscore_spectra(spectra, good=good)).float()

    @torch.inference_mode()
    def __call__(
        self,
        images_whc: torch.Tensor | None,
        spectra: torch.Tensor | None,
        targetid: np.ndarray,
        spectrum_ivar: torch.Tensor | None = None,
    ) -> dict[str, np.ndarray]:
        """(B, 152, 152, 3), (B, 7781), (B,) -> feature arrays, e.g. image_features (B, 2048); only the
        modalities of ``config.modalities`` are encoded (the other input may be None). ``spectrum_ivar`` (B, 7781):
        pixels with 0 are left out of the spectra's Z-score (``preprocess.MASKED_PIXELS``)."""
        cfg = self.config
        out = {}
        if "image" in cfg.modalities:
            images = images_whc.to(self.device, non_blocking=True)
            out["image_features"] = self._image_features(
                preprocess_images(images, cfg.crop, cfg.rgb_mapping, cfg.image_orientation)
            )
        if "spectrum" in cfg.modalities:
            spectra = spectra.to(self.device, non_blocking=True)
            good = None if spectrum_ivar is None else spectrum_ivar.to(self.device, non_blocking=True) > 0
            out["spectrum_features"] = self._spectrum_features(spectra, good)
        if cfg.variants and "image" in cfg.modalities:
            chw = images_to_chw(images, cfg.image_orientation)
            out["image_features_aug"] = torch.stack(
                [
                    self._image_features(
                        grz_to_rgb(augment_images(chw, targetid, v, cfg.crop, cfg.seed), cfg.rgb_mapping)
                    )
                    for v in range(cfg.variants)
                ],
                dim=1,
            )
        if cfg.spectrum_variants and "spectrum" in cfg.modalities:
            out["spectrum_features_aug"] = torch.stack(
                [
                    self._spectrum_features(augment_spectra(spectra, targetid, v, cfg.seed), good)
                    for v in range(cfg.spectrum_variants)
                ],
                dim=1,
            )
        return {k: v.cpu().numpy() for k, v in out.items()}
