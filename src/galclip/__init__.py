"""galclip: cache-first AstroCLIP — frozen encoders, cached features, fast heads, FAISS search.

From Python: ``open_store``, ``load_heads``, ``embed`` and ``open_index`` (see :mod:`galclip.api`).
They are imported on first use, so ``import galclip`` stays cheap.
"""

__version__ = "0.2.0"

__all__ = ["open_store", "load_heads", "embed", "open_index"]


def __getattr__(name: str):
    if name in __all__:
        from galclip import api

        return getattr(api, name)
    raise AttributeError(f"module 'galclip' has no attribute {name!r}")
