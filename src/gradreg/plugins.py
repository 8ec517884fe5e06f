"""Import the user's own components (models, datasets, regularizers, recipes) where runs train.

A sweep's worker processes are spawned fresh (and ray's run on other processes or nodes): they know
gradreg's built-in registries, not what the user's script registered. ``imports`` names the modules
whose import registers those components, and every process that trains imports them first::

    # my_models.py
    from torch import nn
    import gradreg

    @gradreg.register_model("wide_mlp")
    def wide_mlp(*, input_shape, num_outputs, batchnorm, dropout):
        ...

    # in an experiment file: imports = ["my_models.py"]   (or run_sweep(..., imports=[...]))

An entry ending in ``.py`` is a file, imported by path (relative paths from the current directory;
an experiment file's own entries are taken relative to that file). Any other entry is a module name,
imported with :func:`importlib.import_module` from ``sys.path`` (an installed package). Importing runs
the file's code: list only files you would run yourself. On a ray cluster every node needs them at
the same path (or installed).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path

__all__ = ["import_plugins", "resolve_imports"]


def resolve_imports(imports: Iterable[str], base: str | os.PathLike | None = None) -> tuple[str, ...]:
    """``imports`` with each ``.py`` entry made an absolute path (relative ones taken from ``base``,
    default the current directory), so that processes with another working directory find them."""
    out = []
    for entry in imports:
        if not isinstance(entry, str) or not entry.strip():
            raise ValueError(f"imports: each entry must be a module name or a .py file, got {entry!r}")
        if entry.endswith(".py"):
            path = Path(entry).expanduser()
            entry = str((Path(base or ".") / path).resolve() if not path.is_absolute() else path.resolve())
        out.append(entry)
    return tuple(out)


def import_plugins(imports: Iterable[str]) -> None:
    """Import each module name or ``.py`` file once per process (already imported ones are skipped,
    so a component registers once however often a sweep starts). A missing module or file raises
    ValueError naming it; an error inside the module's own code propagates as it is."""
    for entry in resolve_imports(imports):
        if entry.endswith(".py"):
            _import_file(Path(entry))
            continue
        try:
            importlib.import_module(entry)
        except ModuleNotFoundError as e:
            if e.name is not None and entry.startswith(e.name):  # the entry itself, not one of its imports
                raise ValueError(f"imports: no module named {entry!r} on sys.path; give a .py file's path "
                                 f"instead, or install the package") from None
            raise


def _import_file(path: Path) -> None:
    if not path.is_file():
        raise ValueError(f"imports: no file at {path}")
    for module in list(sys.modules.values()):  # imported already, under its own name (the user's script)
        file = getattr(module, "__file__", None)
        if file is not None and os.path.realpath(file) == str(path):
            return
    # One name per path: the same file imported twice is one module, two files of one stem are two.
    name = f"gradreg_plugin_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"imports: cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]  # so the next attempt runs it again instead of skipping a broken module
        raise
