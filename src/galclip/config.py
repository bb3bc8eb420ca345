"""Frozen configuration dataclasses, one per stage.

A sweep or a test builds variants with ``dataclasses.replace(base, lr=...)``; every stage
records ``dataclasses.asdict(config)`` beside its outputs so a result can be rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass

RGB_MAPPINGS = ("lupton", "stein")
ORIENTATIONS = ("survey", "stein")
ENCODER_BACKENDS = ("fused", "eager")  # how the encoders run: galclip.extract.backends


def check_backend(backend: str | None) -> None:
    """Refuse an encoder backend that is not one of :data:`ENCODER_BACKENDS` (None: the default)."""
    if backend is not None and backend not in ENCODER_BACKENDS:
        raise ValueError(f"backend must be one of {ENCODER_BACKENDS}, got {backend!r}")


@dataclass(frozen=True)
class MockConfig:
    """How to generate a mock survey in the AstroCLIP/PROVABGS on-disk layouts."""

    pairs: int = 4000
    seed: int = 0
    n_groups: int = 10
    labelled_fraction: float = 0.85  # share of pairs with a PROVABGS-like catalogue row
    redshift_stretch: float = 2.0  # SDSS main-sample z scaled towards DESI BGS depths
    z_max: float = 0.6
    batch_size: int = 256
    modality: str = "both"  # "image" or "spectrum": single-modality files, as for galaxies to predict
    # rare classes planted at rates, ((class, rate), ...) with class "lenses" or "agn" and 0 < rate <= 0.5
    # (galclip.data.mock.plant; 'galclip mock --plant lenses=0.01,agn=0.01'); () plants nothing
    plant: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.modality not in ("both", "image", "spectrum"):
            raise ValueError(f"modality must be 'both', 'image' or 'spectrum', got {self.modality!r}")
        try:
            plant = tuple((str(name), float(rate)) for name, rate in self.plant)
        except (TypeError, ValueError):
            raise ValueError(f"plant must be ((class, rate), ...), got {self.plant!r}") from None
        object.__setattr__(self, "plant", plant)
        names = [name for name, _ in plant]
        if len(set(names)) != len(names):
            raise ValueError(f"plant names a class twice: {plant!r}")
        for name, rate in plant:
            if name not in ("lenses", "agn"):  # galclip.data.mock.plant.PLANT_CLASSES
                raise ValueError(f"plant class must be 'lenses' or 'agn', got {name!r}")
            if not 0.0 < rate <= 0.5:
                raise ValueError(f"plant rate must be in (0, 0.5], got {name}={rate!r}")


@dataclass(frozen=True)
class ExtractConfig:
    """Stage one: frozen encoders over every pair, penultimate features into the store."""

    image_weights: str | None = None  # Stein et al. MoCo-v2 Lightning .ckpt
    spectrum_weights: str | None = None  # official Spender .pt
    rgb: str | None = None  # "lupton" | "stein"; None: "stein" with Stein weights, else "lupton"
    orientation: str | None = None  # "survey" | "stein"; None: "stein" with Stein weights, else "survey"
    crop: int = 96
    batch_size: int = 64
    variants: int = 0  # augmented image views per galaxy, stored as (N, K, 2048)
    spectrum_variants: int = 0  # noise re-draws per spectrum, stored as (N, Ks, 256)
    seed: int = 0  # seeds random weights (no checkpoint) and the augmented views
    device: str = "auto"
    catalogue: str | None = None  # PROVABGS-layout catalogue for labels
    test_fraction: float = 0.1  # the test split: hash(targetid) < 0.1, the seed's 10% of pairs
    selection_fraction: float = 0.1  # the selection split (LR schedule, early stopping, best epoch): the next 10%
    rows_per_shard: int = 256
    num_workers: int | None = None  # DataLoader workers; None: 0 on CPU, up to 8 on CUDA
    compile: bool = False  # torch.compile the encoders (they then run eager)
    backend: str | None = None  # "fused" | "eager" (extract.backends); None: the store's own, else "fused"
    bad_rows: str = "fail"  # "fail": stop at the first bad input row; "skip": quarantine it and go on
    modalities: tuple[str, ...] = ("image", "spectrum")  # one alone: galclip predict's single-modality stores
    labels: tuple[str, ...] = ()  # --label NAME=COLUMN: more catalogue columns to store as labels
    match_radius_arcsec: float = 1.0  # images and spectra without a shared TARGETID are paired within this radius

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(self.modalities))
        object.__setattr__(self, "labels", tuple(self.labels))
        if not self.modalities or any(m not in ("image", "spectrum") for m in self.modalities):
            raise ValueError(f"modalities must be 'image', 'spectrum' or both, got {self.modalities!r}")
        if self.orientation is not None and self.orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {self.orientation!r}")
        if self.rgb is not None and self.rgb not in RGB_MAPPINGS:
            raise ValueError(f"rgb must be one of {RGB_MAPPINGS}, got {self.rgb!r}")
        if self.batch_size < 1 or self.rows_per_shard < 1:
            raise ValueError("batch_size and rows_per_shard must be >= 1")
        if self.variants < 0 or self.spectrum_variants < 0:
            raise ValueError("variants must be >= 0")
        check_backend(self.backend)
        if self.bad_rows not in ("fail", "skip"):
            raise ValueError(f"bad_rows must be 'fail' or 'skip', got {self.bad_rows!r}")

    @property
    def custom_labels(self) -> dict[str, str]:
        """``labels`` as {name: catalogue column} (refused, naming the option, when malformed)."""
        from galclip.data.catalogue import parse_label_options

        return parse_label_options(self.labels)

    @property
    def image_orientation(self) -> str:
        """How the stored (W, H, C) cutout becomes the encoder's (C, ., .) tensor: "stein" is what Stein et al.'s
        training loader fed the network (swapaxes then ToTensor: (C, W, H)), so it goes with the Stein weights;
        "survey" is the cutout's own (C, H, W) orientation."""
        if self.orientation is not None:
            return self.orientation
        return "stein" if self.image_weights else "survey"

    @property
    def rgb_mapping(self) -> str:
        """The grz->RGB mapping in force: the Stein variant goes with the Stein weights."""
        if self.rgb is not None:
            return self.rgb
        return "stein" if self.image_weights else "lupton"


@dataclass(frozen=True)
class HeadConfig:
    """Stage two: projection heads trained with symmetric InfoNCE on cached features."""

    epochs: int = 80
    batch_size: int = 512
    lr: float = 1e-4  # chosen on the demo store: 5e-4 overfits by epoch ~12 (see README)
    tau: float = 0.1  # fixed temperature, or the starting one with learn_tau
    learn_tau: bool = False  # learn τ (as log 1/τ, clamped to τ >= tau_min), as open_clip does
    tau_min: float = 0.01
    weight_decay: float = 0.0
    lr_factor: float = 0.5  # ReduceLROnPlateau factor (report: 2x reduction)
    lr_patience: int = 5  # ReduceLROnPlateau patience in epochs (report)
    early_stopping: int | None = 15  # stop after this many epochs without improvement on the selection split
    aug_prob: float = 0.5  # per pair and step: use a stored augmented view instead of the clean one
    standardise: bool = True  # z-score features with train-set mean/std before the heads
    image_hidden: int = 2048  # image head: 2048 -> image_hidden -> embed_dim
    spectrum_hidden: tuple[int, ...] = (256, 128, 128)  # spectrum head: 256 -> ... -> embed_dim
    embed_dim: int = 128
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.tau <= 0 or self.tau_min <= 0:
            raise ValueError("tau and tau_min must be > 0")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 for a contrastive loss")
        if not 0.0 <= self.aug_prob <= 1.0:
            raise ValueError("aug_prob must be in [0, 1]")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0 and weight_decay >= 0")
        object.__setattr__(self, "spectrum_hidden", tuple(self.spectrum_hidden))

    @property
    def image_sizes(self) -> tuple[int, ...]:
        return (2048, self.image_hidden, self.embed_dim)

    @property
    def spectrum_sizes(self) -> tuple[int, ...]:
        return (256, *self.spectrum_hidden, self.embed_dim)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation: retrieval, zero-shot k-NN regression, UMAP, report."""

    k: int = 16  # k-NN neighbours (report: 16, distance weights)
    extra_k: tuple[int, ...] = (64,)  # also reported: k = 64 as the AstroCLIP MNRAS paper uses
    supervised: bool = True  # MLP on the raw features as the supervised upper reference
    knn_test_fraction: float = 0.5  # share of the labelled test split queried by the k-NN (the other half is fitted)
    seed: int = 0
    n_gallery_queries: int = 3
    gallery_k: int = 5
    umap: bool = True
    umap_max_points: int = 20000  # fitted on a seeded subsample of this size, the rest transformed
    umap_cache: str | None = None  # folder of cached UMAP coordinates (None: no cache)
