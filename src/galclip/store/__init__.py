"""The Zarr feature store that stage one writes and stage two reads."""

from galclip.store.feature_store import FeatureStore, StoreInfo

__all__ = ["FeatureStore", "StoreInfo"]
