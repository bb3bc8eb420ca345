"""galclip: cache-first AstroCLIP — frozen encoders, cached features, fast heads, FAISS search."""

__version__ = "0.1.0"
