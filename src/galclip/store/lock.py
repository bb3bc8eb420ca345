"""A lock file beside a store, so two extraction processes never write it at the same time.

``<store>.lock`` holds the holder's pid, host and start time. A lock whose holder is gone (same
host, pid no longer running) is stale and is broken safely; any other existing lock makes the
second process refuse with a message naming the holder. torchrun ranks coordinate through
torch.distributed instead and take no lock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from galclip.errors import StoreError

logger = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLock:
    """Context manager: exclusive writer lock for the store at ``store_path``."""

    def __init__(self, store_path: str | Path):
        self.path = Path(str(store_path).rstrip("/") + ".lock")
        self.held = False

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = json.loads(self.path.read_text())
                except (OSError, ValueError):
                    holder = {}
                if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
                    logger.warning("breaking a stale lock %s left by pid %s (no longer running)", self.path, holder["pid"])
                    self.path.unlink(missing_ok=True)
                    continue
                raise StoreError(
                    f"{self.path}: another extraction is writing this store (pid {holder.get('pid')} on "
                    f"{holder.get('host')}, since {holder.get('started')}); wait for it to finish, or, if that "
                    "process is gone on another host, delete the lock file. For many GPUs use torchrun."
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise StoreError(f"{self.path}: could not take the lock")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "StoreLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
