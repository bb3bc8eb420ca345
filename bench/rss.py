"""Peak memory of one piece of code, in a fresh interpreter, above the memory of its imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def measured(imports: str, code: str, values: dict, cwd: Path | None = None, timeout: float = 7200) -> dict:
    """Run ``imports`` then ``code`` in a fresh ``python -c`` with ``values`` bound as globals; returns
    {"peak_rss_mb": peak RSS above the post-import RSS, "seconds": wall time of ``code``, "result": the
    JSON value ``code`` left in ``RESULT`` (or None)}.

    The kernel's high-water mark (VmHWM) is reset after the imports (``/proc/self/clear_refs``), so the
    import-time peak of the CUDA-enabled torch build does not hide the code's own memory."""
    prog = (
        f"import json, time\n{imports}\n"
        + "".join(f"{k} = {v!r}\n" for k, v in values.items())
        + "def kb(key):\n    return int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1])\n"
        "open('/proc/self/clear_refs', 'w').write('5'); base = kb('VmRSS'); t = time.perf_counter()\n"
        "RESULT = None\n" + f"{code}\n"
        "print('\\nMEASURED', json.dumps({'peak_rss_mb': (kb('VmHWM') - base) / 1024, "
        "'seconds': time.perf_counter() - t, 'result': RESULT}, default=float))"
    )
    done = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the measured code failed:\n{done.stderr[-3000:]}")
    line = next(line for line in reversed(done.stdout.splitlines()) if line.startswith("MEASURED "))
    return json.loads(line[len("MEASURED ") :])
