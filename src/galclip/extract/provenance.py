"""What a store's features are and where they came from: the provenance record an extraction writes."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from galclip.config import ExtractConfig
from galclip.data.preprocess import MASKED_PIXELS
from galclip.data.sources import SurveySource
from galclip.extract.backends import resolve_backend
from galclip.extract.image_encoder import IMAGE_FEATURE_DIM
from galclip.extract.spectrum_encoder import SPECTRUM_FEATURE_DIM
from galclip.provenance import code_version, sha256_file

AUGMENT_VERSION = 2  # bump when the augmentation recipe changes: stores then refuse to mix (2: PSF blur σ in pixels)


def weights_record(path: str | None, seed: int, kind: str) -> dict:
    """How the ``kind`` encoder's weights are identified: the checkpoint's path and SHA-256, or the seed of random
    ones."""
    if path is None:
        return {"source": "random", "seed": seed, "note": f"seeded random {kind} weights: NOT a pretrained encoder"}
    return {"source": str(Path(path).resolve()), "sha256": sha256_file(path)}


def build_provenance(
    config: ExtractConfig,
    reader: SurveySource,
    catalogue: str | None,
    device_type: str = "cpu",
    data_arguments: list | None = None,
) -> dict:
    """Everything needed to know what the store's features are and where they came from. A single-modality
    store (``config.modalities``, as ``galclip predict`` writes) records only its own encoder and preprocessing."""
    encoders = {
        "image": {
            "architecture": "torchvision resnet50 trunk (MoCo-v2, Stein et al. 2021)",
            "features": "global average pool",
            "dim": IMAGE_FEATURE_DIM,
            "weights": weights_record(config.image_weights, config.seed, "image"),
        },
        "spectrum": {
            "architecture": "spender SpectrumEncoder (Melchior et al. 2023)",
            "features": "attention-weighted sum e = sum h*softmax(a)",
            "dim": SPECTRUM_FEATURE_DIM,
            "weights": weights_record(config.spectrum_weights, config.seed, "spectrum"),
        },
    }
    preprocessing = {
        "image": {
            "layout_in": "(W,H,C) g,r,z",
            "centre_crop": config.crop,
            "rgb": config.rgb_mapping,
            "orientation": config.image_orientation,
        },
        "spectrum": {"normalisation": "per-spectrum z-score"},
    }
    if "spectrum" in config.modalities and reader.read(0, 1).spectrum_ivar is not None:
        preprocessing["spectrum"]["masked_pixels"] = MASKED_PIXELS  # absent for AstroCLIP's files: they carry none
    return {
        "encoders": {m: encoders[m] for m in config.modalities},
        "preprocessing": {
            **{m: preprocessing[m] for m in config.modalities},
            # bf16 autocast on GPUs changes the features' last bits: a store is finished on the kind it began on
            # and the backend's features differ from another's in the last bits (extract.backends)
            "compute": {
                "device_type": device_type,
                "bf16_autocast": device_type == "cuda",
                "backend": resolve_backend(config.backend, device_type, config.compile),
            },
            "variants": {
                "image": config.variants,
                "spectrum": config.spectrum_variants,
                "seed": config.seed,
                "augment_version": AUGMENT_VERSION,
                "image_recipe": (
                    "rotate(any angle)+flips+jitter(7px)+crop, extra PSF blur (sigma in px), extra sky noise"
                ),
                "spectrum_recipe": "noise re-draw at the robust per-spectrum noise level",
            },
        },
        "data": reader.fingerprint(),
        "data_arguments": [str(Path(p).resolve()) for p in data_arguments] if data_arguments else None,
        "data_content": reader.content(),  # what every reader of the survey rows checks the files against
        "catalogue": str(Path(catalogue).resolve()) if catalogue else None,
        "split": {
            "method": "u = splitmix64(targetid) in [0, 1): test u < test_fraction, selection u < test_fraction "
            "+ selection_fraction, train the rest",
            "test_fraction": config.test_fraction,
            "selection_fraction": config.selection_fraction,
        },
        "rows_per_shard": config.rows_per_shard,
        "code_version": code_version(),
        "torch_version": torch.__version__,
        "config": asdict(config),
    }


def config_from_provenance(provenance: dict, **overrides) -> ExtractConfig:
    """The extraction settings a store recorded, as an :class:`ExtractConfig` (fields later versions added take what
    the store did: its recorded image orientation), with ``overrides`` applied."""
    from dataclasses import fields

    known = {f.name for f in fields(ExtractConfig)}
    recorded = {k: v for k, v in (provenance.get("config") or {}).items() if k in known}
    image = (provenance.get("preprocessing") or {}).get("image") or {}
    if "orientation" in image:
        recorded["orientation"] = image["orientation"]
    return ExtractConfig(**{**recorded, **overrides})


# the ExtractConfig fields that decide a store's bytes, and the 'galclip extract' option that sets each
COMMAND_OPTIONS = {
    "image_weights": "--image-weights",
    "spectrum_weights": "--spectrum-weights",
    "catalogue": "--catalogue",
    "orientation": "--orientation",
    "rgb": "--rgb",
    "variants": "--variants",
    "spectrum_variants": "--spectrum-variants",
    "rows_per_shard": "--rows-per-shard",
    "bad_rows": "--bad-rows",
    "seed": "--seed",
    "labels": "--label",
    "match_radius_arcsec": "--match-radius",
}  # not --backend: a store resumes with its own unless told otherwise


def extract_command(provenance: dict, store: str | Path) -> str:
    """The 'galclip extract' command line that resumes the store whose ``provenance`` this is: its survey files and
    every recorded option that decides its bytes and differs from the default (shell-quoted)."""
    import os
    import shlex

    from galclip.config import ExtractConfig

    recorded = provenance.get("config") or {}
    files = list((provenance.get("data") or {}).get("files") or [])
    found_beside = provenance.get("catalogue") and not recorded.get("catalogue")  # found in DATA's folder
    if provenance.get("data_arguments"):  # the DATA arguments as given (several for images + spectra)
        data = list(provenance["data_arguments"])
    elif len(files) == 1 and not found_beside:
        data = [files[0]]
    elif files:
        data = [os.path.commonpath([str(Path(f).parent) for f in files])]
    else:
        data = ["DATA"]
    default = ExtractConfig()
    words = ["galclip", "extract", *data, str(store)]
    for field, option in COMMAND_OPTIONS.items():
        value = recorded.get(field)
        if isinstance(value, list | tuple):
            for item in value:
                words += [option, str(item)]
        elif value is not None and value != getattr(default, field):
            words += [option, str(value)]
    return " ".join(shlex.quote(w) for w in words)
