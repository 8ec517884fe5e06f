"""Errors as the user should read them: one line naming the problem and the fix.

:func:`error_cause` reduces a stored traceback to its exception line (what a sweep summary groups
failed runs by); :func:`user_message` maps an exception the ``gradreg`` command let through to that one
line, or None for an exception that is a bug (its traceback is the useful report then).
"""
from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable

__all__ = ["error_cause", "group_failures", "user_message"]

# An exception line of a traceback: "ValueError: ...", "gradreg.data.DataError: ...", "KeyError".
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Died|Exit|Interrupt)\b(?::|$)")


def error_cause(error: str | None) -> str:
    """The line of ``error`` (a traceback's text) that says what went wrong: its last exception line
    (the one raised last, after any chained ones), module prefixes dropped; else its last line."""
    lines = [line.rstrip() for line in (error or "").splitlines() if line.strip()]
    if not lines:
        return "(no error text recorded)"
    found = [line for line in lines if _EXCEPTION_LINE.match(line)]
    line = found[-1] if found else lines[-1]
    name, sep, rest = line.partition(":")
    return name.rsplit(".", 1)[-1] + sep + rest


def group_failures(rows: Iterable[dict]) -> list[tuple[str, int, str]]:
    """``(cause, count, one run key)`` per distinct :func:`error_cause` of failed ``rows``, most common first."""
    groups: dict[str, list[str]] = {}
    for row in rows:
        groups.setdefault(error_cause(row.get("error")), []).append(row["key"])
    return sorted(((cause, len(keys), keys[0]) for cause, keys in groups.items()), key=lambda g: (-g[1], g[0]))


def user_message(exc: BaseException) -> str | None:
    """One line for an exception that is the user's to fix (bad values, unknown names, missing files or
    extras, an unusable database or device); None for anything else, which is a bug to report."""
    from .data import DataError
    from .store import StoreError

    text = " ".join(str(exc).split()) if str(exc) else type(exc).__name__
    if isinstance(exc, (StoreError, DataError)):
        return text
    if isinstance(exc, sqlite3.OperationalError):
        if "locked" in text:
            return f"the results database is locked by another process ({text}); wait for it, or pass another --db"
        if "readonly" in text:
            return f"the results database is read-only ({text}); copy it somewhere writable and pass that --db"
        return f"results database error ({text}); check --db"
    if isinstance(exc, sqlite3.DatabaseError):
        return f"the results database is damaged or not a database ({text}); pass another --db"
    if isinstance(exc, ModuleNotFoundError) and exc.name in ("ray", "matplotlib", "torchvision"):
        extra = {"ray": "ray", "matplotlib": "plot", "torchvision": "data"}[exc.name]
        return f"{exc.name} is not installed; pip install 'gradreg[{extra}]' (or pip install {exc.name})"
    if isinstance(exc, ImportError):
        return text
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or text}; choose a path you can write (--db, --out, --csv)"
    if isinstance(exc, (NotADirectoryError, IsADirectoryError, FileNotFoundError)):
        return f"{exc.strerror or text}: {exc.filename}; check the path"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{exc.strerror}: {exc.filename or text}"
    if isinstance(exc, ValueError):
        return text
    return None
