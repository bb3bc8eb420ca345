"""The product side of the shared space: build FAISS indexes over a store (``build``), open and
search them (``search``: :class:`Index`, :func:`open_index`), and embed a store or a new pair
(``embed``). Submodules import faiss and torch, so importing this package is cheap."""
