"""What makes two stores' features of one modality the same: the encoder (its weights by SHA-256, wherever the file
lies) and its preprocessing. ``galclip predict`` and ``galclip index --also/--append`` refuse a store whose features
would come from another encoder than the reference store's."""

from __future__ import annotations

from galclip.store.feature_store import leaf_diff


def encoder_identity(provenance: dict, modality: str) -> dict:
    """The part of a store's provenance that decides its ``modality`` features: encoder and preprocessing."""
    enc = dict((provenance.get("encoders") or {}).get(modality) or {})
    weights = dict(enc.get("weights") or {})
    if "sha256" in weights:
        weights.pop("source", None)
    enc["weights"] = weights
    return {
        "encoders": {modality: enc},
        "preprocessing": {modality: (provenance.get("preprocessing") or {}).get(modality)},
    }


def encoder_differences(reference: dict, other: dict, modality: str) -> list[str]:
    """Each field where ``other``'s ``modality`` encoder or preprocessing differs from ``reference``'s (empty when
    the same), as 'path: store has A, this run has B'."""
    return leaf_diff(encoder_identity(reference, modality), encoder_identity(other, modality))
