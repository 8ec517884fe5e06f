"""The fields of a results row that are not the run's own: who is writing it (owner ids and whether an
owner still lives), how values are stored (strict JSON, compressed when long), and which code wrote it
(runtime versions). :mod:`gradreg.store` uses them and re-exports the public ones.
"""
from __future__ import annotations

import functools
import json
import math
import os
import platform
import socket
import subprocess
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_STALE_AFTER", "owner_id", "owner_alive", "to_json", "to_packed", "from_packed",
           "runtime_versions"]

DEFAULT_STALE_AFTER = 300.0  # seconds without a heartbeat after which a running row's owner counts as dead


def owner_id() -> str:
    """A fresh owner string ``host:pid:tag``.

    Host and pid let a claim on the same machine see at once that the owner died; the random tag
    keeps two owners in one process (or a recycled pid) apart.
    """
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:  # e.g. Windows, where signal 0 is not a probe: trust the heartbeat instead
        return True
    return True


def owner_alive(owner: str | None, heartbeat: float | None, *, stale_after: float = DEFAULT_STALE_AFTER,
                now: float | None = None) -> bool:
    """Whether a ``running`` row's owner may still be working on it.

    Dead: a heartbeat older than ``stale_after`` seconds (any host), or an owner on this host whose
    pid no longer exists. An owner on another host with a fresh heartbeat is presumed alive, since
    its pid cannot be checked from here.
    """
    now = time.time() if now is None else now
    if heartbeat is None or now - heartbeat > stale_after:
        return False
    parts = (owner or "").rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return True  # not one of ours: only the heartbeat can tell
    host, pid = parts[0], int(parts[1])
    if host == socket.gethostname() and os.name == "posix":
        return _pid_alive(pid)
    return True


def _finite(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by None and tensors/arrays turned into lists.

    Diverged runs carry NaN metrics; strict JSON has no NaN, and SQLite's JSON functions (and most
    readers) reject it, so a missing value is written as null.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and scalars
        return _finite(value.tolist())
    if hasattr(value, "__float__"):
        return _finite(float(value))
    return repr(value)  # e.g. a model object in extras: keep a trace instead of failing the run


_COMPRESS_ABOVE = 512  # characters of JSON; below this zlib saves little


def to_packed(value: Any) -> str | bytes | None:
    """:func:`to_json`, zlib-compressed into bytes when long (read back with :func:`from_packed`)."""
    text = to_json(value)
    if text is None or len(text) <= _COMPRESS_ABOVE:
        return text
    return zlib.compress(text.encode(), 9)


def from_packed(value: str | bytes | None) -> Any:
    if value is None:
        return None
    return json.loads(zlib.decompress(value) if isinstance(value, bytes) else value)


def to_json(value: Any) -> str | None:
    """Strict (finite-safe) JSON text for a database column; None stays SQL NULL."""
    if value is None:
        return None
    return json.dumps(_finite(value), allow_nan=False, sort_keys=True)


def _git_revision() -> str | None:
    """The git commit of the gradreg source tree, when it is a checkout and git answers quickly."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=2.0, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    return rev if out.returncode == 0 and rev else None


@functools.lru_cache(maxsize=1)
def runtime_versions() -> dict[str, str | None]:
    """Python, torch and gradreg versions and the git revision, to tell which code produced a row.

    Read from package metadata, so recording them does not import torch; cached per process.
    """
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "torch": version("torch"),
            "gradreg": version("gradreg"), "git": _git_revision()}
