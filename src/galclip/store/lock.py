"""A lock beside a store, so two extraction processes never write it at the same time.

``<store>.lock`` is held with ``fcntl.flock`` for the whole run: the kernel releases it when the
process ends in any way (``kill -9`` included), so a stale lock cannot exist. The holder removes the file as it
releases the lock (a run that ends normally, or is refused, leaves no lock file). The file records
the holder's pid, host and start time, which a refused second process reports.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from galclip.errors import StoreError

logger = logging.getLogger(__name__)


class StoreLock:
    """Context manager: exclusive writer lock for the store at ``store_path``."""

    def __init__(self, store_path: str | Path):
        self.path = Path(str(store_path).rstrip("/") + ".lock")
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                break
            try:  # the holder before us removes the file as it releases: a lock on a removed file locks nothing
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except ValueError:
                holder = {}
            os.close(fd)
            raise StoreError(
                f"{self.path}: another extraction is writing this store (pid {holder.get('pid')} on "
                f"{holder.get('host')}, since {holder.get('started')}); wait for it to finish. "
                "For many GPUs use torchrun, whose ranks share the work."
            ) from None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        """Unlock, and remove the lock file (a run leaves no ``.lock`` behind)."""
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still held: a waiting process then retries on a new file
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
