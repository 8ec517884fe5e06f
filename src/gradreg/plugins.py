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
an experiment file's own entries are taken relative to that file). As ``python my_models.py`` would,
its folder goes on ``sys.path``, so it can import the modules beside it; where that folder already
makes it importable by its own name (``my_models``), it is imported under that name, so a script's
``import my_models`` finds it imported already and nothing registers twice. Any other entry is a
module name, imported with :func:`importlib.import_module` from ``sys.path`` (an installed package).
Importing runs the file's code: list only files you would run yourself. On a ray cluster every node
needs them at the same path (or installed).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Union

__all__ = ["import_plugins", "resolve_imports"]


Imports = Union[str, os.PathLike, Iterable[Union[str, os.PathLike]]]


def resolve_imports(imports: Imports, base: str | os.PathLike | None = None) -> tuple[str, ...]:
    """``imports`` (one entry or several; paths as ``str`` or ``os.PathLike``) with each ``.py`` entry
    made an absolute path (relative ones taken from ``base``, default the current directory), so that
    processes with another working directory find them."""
    if isinstance(imports, (str, os.PathLike)):
        imports = [imports]
    out = []
    for entry in imports:
        if isinstance(entry, os.PathLike):
            entry = os.fspath(entry)
        if not isinstance(entry, str) or not entry.strip():
            raise ValueError(f"imports: each entry must be a module name or a .py file, got {entry!r}")
        if not entry.endswith(".py") and (entry.startswith(".") or "/" in entry or os.sep in entry):
            raise ValueError(f"imports: {entry!r} is neither a module name (my_package.models) nor a .py file "
                             f"(path/to/my_models.py)")
        if entry.endswith(".py"):
            path = Path(entry).expanduser()
            entry = str((Path(base or ".") / path).resolve() if not path.is_absolute() else path.resolve())
        out.append(entry)
    return tuple(out)


def import_plugins(imports: Imports) -> None:
    """Import each module name or ``.py`` file once per process (already imported ones are skipped,
    so a component registers once however often a sweep starts).

    A missing module or file raises ValueError naming it. An error raised by the module's own code
    (a bug, a missing dependency) is re-raised as ImportError naming the entry, with the original
    exception and its traceback chained."""
    for entry in resolve_imports(imports):
        try:
            if entry.endswith(".py"):
                _import_file(Path(entry))
            else:
                importlib.import_module(entry)
        except ModuleNotFoundError as e:
            if e.name == entry or entry.startswith(f"{e.name}."):  # the entry itself, not one of its imports
                raise ValueError(f"imports: no module named {entry!r} on sys.path; give a .py file's path "
                                 f"instead, or install the package") from None
            raise ImportError(f"imports: importing {entry} failed: {type(e).__name__}: {e}") from e
        except ValueError as e:
            if str(e).startswith("imports: "):  # ours, about the entry
                raise
            raise ImportError(f"imports: importing {entry} failed: {type(e).__name__}: {e}") from e
        except Exception as e:
            raise ImportError(f"imports: importing {entry} failed: {type(e).__name__}: {e}") from e


def _import_file(path: Path) -> None:
    if not path.is_file():
        raise ValueError(f"imports: no file at {path}")
    for module in list(sys.modules.values()):  # imported already, e.g. by the user's script
        file = getattr(module, "__file__", None)
        if file is not None and os.path.realpath(file) == str(path):
            return
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # as `python my_models.py` does: the modules beside it import
    try:
        natural = importlib.util.find_spec(path.stem)
    except (ImportError, ValueError):
        natural = None
    if natural is not None and natural.origin and os.path.realpath(natural.origin) == str(path):
        importlib.import_module(path.stem)  # one module under its own name, as a later `import` expects
        return
    # Shadowed by another module of that name: a name of its own, one per path.
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
