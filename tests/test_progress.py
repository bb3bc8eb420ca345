"""Progress reporting: a bar on a terminal, log lines with rate and ETA in a log file."""

from __future__ import annotations

import logging
import subprocess
import sys

from galclip.progress import LogProgress, progress


def test_log_progress_logs_rate_and_eta_every_so_often(caplog, monkeypatch):
    clock = iter([0.0, 10.0, 40.0, 50.0, 90.0, 100.0])
    monkeypatch.setattr("galclip.progress.time.perf_counter", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="galclip.progress"):
        bar = LogProgress(total=100, desc="extract", unit="pair", every_s=30)  # t = 0
        bar.update(10)  # t = 10: too soon, nothing logged
        bar.update(30)  # t = 40: logged
        bar.update(10)  # t = 50: too soon
        bar.set_postfix(loss="1.2")
        bar.update(10)  # t = 90: logged
        bar.close()  # t = 100: the last line
        bar.close()  # a second close logs nothing
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "extract: 40/100 pair (1.0 pair/s, ETA 60 s)",
        "extract: 60/100 pair (0.7 pair/s, ETA 60 s) loss=1.2",
        "extract: 60/100 pair (0.6 pair/s, ETA 67 s) loss=1.2",
    ]


def test_progress_in_a_log_file_writes_no_carriage_returns(tmp_path):
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
        "from galclip.progress import progress\n"
        "bar = progress(500, 'heads', 'epoch')\n"
        "[bar.update(1) for _ in range(500)]\nbar.close()\n"
    )
    with open(tmp_path / "log.txt", "w") as log:
        subprocess.run([sys.executable, "-c", code], stderr=log, check=True)
    text = (tmp_path / "log.txt").read_text()
    assert "\r" not in text and text.count("heads: 500/500 epoch") == 1


def test_disabled_progress_is_silent(caplog):
    with caplog.at_level(logging.INFO):
        with progress(10, "x", enabled=False) as bar:
            bar.update(10)
    assert not caplog.records
