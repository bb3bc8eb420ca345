"""``galclip rank`` and ``galclip anomalies``: rank an index's galaxies and write the top n as a catalogue, plus the
run's metrics (``<OUT stem>_report/metrics.json``, as ``galclip predict`` does).

Every check runs before anything is written: the output paths, the index, the marks, the space and n."""

from __future__ import annotations

import logging
from pathlib import Path

from galclip.atomic import write_json
from galclip.discover import Index, open_index
from galclip.discover.candidates import result, write_catalogue
from galclip.discover.marks import Marks
from galclip.discover.rank import ANOMALY_K, ANOMALY_SAMPLE, Ranking, anomalies, rank
from galclip.outputs import check_output_dir, default_report_dir, output_dir
from galclip.predict.catalogue import check_output, format_for
from galclip.progress import progress as progress_bar

logger = logging.getLogger(__name__)

REPORT_NAMES = ("metrics.json",)


def _prepare(out: Path, fmt: str | None, report_dir: Path | None, overwrite: bool, command: str) -> tuple[str, Path]:
    fmt = format_for(out, fmt)
    check_output(out, overwrite, fmt)
    report = Path(report_dir) if report_dir is not None else default_report_dir(out)
    check_output_dir(report, command, REPORT_NAMES, overwrite, option="--report")
    return fmt, report


def _finish(index: Index, ranking: Ranking, out: Path, fmt: str, report: Path, command: str, overwrite: bool) -> dict:
    write_catalogue(index, ranking, out, fmt, overwrite)
    answer = result(index, ranking)
    metrics = {k: v for k, v in answer.items() if k != "candidates"}
    metrics.update(catalogue=str(out), format=fmt, n=len(ranking.positions), index=str(Path(index.path).resolve()))
    with output_dir(report, command, REPORT_NAMES, overwrite=True, option="--report"):
        write_json(metrics, report / "metrics.json")
    metrics["metrics_file"] = str(report / "metrics.json")
    metrics["result"] = answer  # the candidates' records, as --json prints them (not in metrics.json)
    return metrics


def _progress(space, what: str, enabled: bool):
    return progress_bar(len(space), what, "galaxy", enabled=enabled)


def rank_catalogue(
    index_dir: str | Path,
    out: str | Path,
    marks: Marks,
    space: str = "embedding",
    n: int = 100,
    seed: int = 0,
    fmt: str | None = None,
    report_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Rank every galaxy of ``index_dir`` by ``marks`` in ``space``; the top ``n`` to the catalogue ``out``."""
    out = Path(out)
    fmt, report = _prepare(out, fmt, report_dir, overwrite, "rank")
    marks.check()
    index = open_index(index_dir)
    sp = index.space(space, seed)
    with _progress(sp, "rank", progress) as bar:
        ranking = rank(sp, marks, n, seed, progress=bar.update)
    return _finish(index, ranking, out, fmt, report, "rank", overwrite)


def anomaly_catalogue(
    index_dir: str | Path,
    out: str | Path,
    space: str = "embedding",
    n: int = 100,
    k: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    fmt: str | None = None,
    report_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """The ``n`` most unusual galaxies of ``index_dir`` in ``space`` to the catalogue ``out`` (``k`` and ``sample``:
    default ``ANOMALY_K`` and ``ANOMALY_SAMPLE``)."""
    out = Path(out)
    fmt, report = _prepare(out, fmt, report_dir, overwrite, "anomalies")
    index = open_index(index_dir)
    sp = index.space(space, seed)
    with _progress(sp, "anomalies", progress) as bar:
        ranking = anomalies(
            sp,
            n,
            ANOMALY_K if k is None else k,
            ANOMALY_SAMPLE if sample is None else sample,
            seed,
            progress=bar.update,
        )
    return _finish(index, ranking, out, fmt, report, "anomalies", overwrite)
