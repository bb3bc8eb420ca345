"""Evaluation: FAISS search, retrieval metrics, zero-shot k-NN, UMAP, plots, HTML report.

Submodules import faiss, matplotlib and umap lazily so importing this package is cheap;
the orchestrator is :func:`galclip.evaluate.run.run_evaluation`.
"""
