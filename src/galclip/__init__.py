"""galclip: cache-first AstroCLIP — frozen encoders, cached features, fast heads, FAISS search.

From Python: ``open_store``, ``load_heads``, ``embed``, ``open_index`` and ``search_survey_pair`` (see
:mod:`galclip.api`).
They are imported on first use, so ``import galclip`` stays cheap.
"""

from galclip.version import __version__ as __version__

__all__ = ["open_store", "load_heads", "embed", "open_index", "embed_survey_pair", "search_survey_pair"]


def __getattr__(name: str):
    if name in __all__:
        from galclip import api

        return getattr(api, name)
    raise AttributeError(f"module 'galclip' has no attribute {name!r}")
