"""Progress for long loops: a tqdm bar on a terminal, a log line every so often elsewhere.

In a log file (stderr not a terminal) a tqdm bar writes a carriage-return frame per update;
there :class:`LogProgress` logs ``desc: n/total unit (rate/s, ETA)`` at most every
``every_s`` seconds, and once at the end.
"""

from __future__ import annotations

import logging
import sys
import time

logger = logging.getLogger(__name__)


class LogProgress:
    """The part of tqdm's interface galclip uses, reported as log lines with rate and ETA."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0, every_s: float = 30.0):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.n = initial
        self._start_n = initial
        self._t0 = self._last = time.perf_counter()
        self._postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            self._log(now)

    def set_postfix(self, **values) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _log(self, now: float) -> None:
        done = self.n - self._start_n
        rate = done / max(now - self._t0, 1e-9)
        eta = (self.total - self.n) / rate if rate > 0 else float("inf")
        eta_text = f"ETA {eta:.0f} s" if eta != float("inf") else "ETA ?"
        logger.info(
            "%s: %d/%d %s (%.1f %s/s, %s)%s",
            self.desc,
            self.n,
            self.total,
            self.unit,
            rate,
            self.unit,
            eta_text,
            f" {self._postfix}" if self._postfix else "",
        )

    def close(self) -> None:
        if self.n > self._start_n:
            self._log(time.perf_counter())
        self._start_n = self.n  # a second close logs nothing

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Silent(LogProgress):
    def _log(self, now: float) -> None:
        return None


def progress(total: int, desc: str, unit: str = "it", enabled: bool = True, initial: int = 0, **tqdm_kwargs):
    """A progress reporter for ``total`` steps: tqdm on a terminal, :class:`LogProgress` otherwise,
    silent when not ``enabled``. Use ``update``, ``set_postfix``, ``close`` (or ``with``)."""
    if not enabled:
        return _Silent(total, desc, unit, initial)
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, **tqdm_kwargs)
    return LogProgress(total, desc, unit, initial)
