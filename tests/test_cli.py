"""The command line, end to end on a tiny mock survey."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from galclip.cli import main


def test_help_is_instant_and_lazy():
    code = "import sys, galclip.cli; print(any(m in sys.modules for m in ('torch', 'faiss', 'umap', 'zarr')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_cli_end_to_end(tmp_path):
    runner = CliRunner()
    data, store, heads, report = tmp_path / "data", tmp_path / "f.zarr", tmp_path / "heads", tmp_path / "report"
    r = runner.invoke(main, ["-q", "mock", "--pairs", "64", "--out", str(data), "--seed", "7"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["-q", "extract", str(data), str(store), "--batch-size", "32", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "extracted 64 pairs" in r.output
    r = runner.invoke(main, ["-q", "extract", str(data), str(store), "--no-progress"])
    assert r.exit_code == 0 and "already complete" in r.output
    r = runner.invoke(main, ["info", str(store)])
    assert r.exit_code == 0 and "1/1 complete" in r.output and "random" in r.output
    r = runner.invoke(main, ["-q", "heads", str(store), str(heads), "--epochs", "3", "--batch-size", "16", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert (heads / "heads.pt").exists() and (heads / "loss_curve.png").exists()
    r = runner.invoke(main, ["-q", "evaluate", str(store), str(heads), str(report), "--no-umap", "--k", "3"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["n_pairs"] == 64
    for d in ("im2sp", "sp2im"):
        assert set(metrics["retrieval"][d]) >= {"recall@1", "recall@5", "recall@10", "median_rank"}
    assert set(metrics["zero_shot_r2"]) >= {"image", "spectrum", "cross", "raw_image", "raw_spectrum"}
    assert set(metrics["supervised_r2"]) == {"raw_image", "raw_spectrum"} and "zero_shot_r2_k64" in metrics
    assert metrics["timings_s"]["evaluate"] > 0
    html = (report / "report.html").read_text()
    assert "data:image/png;base64" in html and "src=\"http" not in html


def test_cli_user_errors_exit_nonzero(tmp_path):
    runner = CliRunner()
    (tmp_path / "junk.h5").write_bytes(b"junk")
    r = runner.invoke(main, ["extract", str(tmp_path / "junk.h5"), str(tmp_path / "s.zarr"), "--no-progress"])
    assert r.exit_code == 1 and "junk.h5" in r.output and "HDF5" in r.output
    assert not (tmp_path / "s.zarr").exists()
    r = runner.invoke(main, ["info", str(tmp_path)])
    assert r.exit_code == 1 and "galclip extract" in r.output
