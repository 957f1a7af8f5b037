"""Atomic file writes for the report scripts (perf_report.py, results_report.py)."""

import os
import tempfile


def write_atomic(path: str, text: str) -> None:
    """Writes `text` to a temporary file beside `path`, then renames it over `path`: a run cut
    short (or a full disk) leaves the previous file as it was."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
