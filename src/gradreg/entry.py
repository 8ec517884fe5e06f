"""The ``gradreg`` command's entry point: the harness's CLI, or one line saying how to install it.

``pip install gradreg`` installs the library alone (torch and numpy); the command needs the
``experiments`` extra, and without it a user gets the install line instead of an ImportError.
"""
from __future__ import annotations

import importlib.util
import sys

__all__ = ["main"]

_HARNESS = ("typer", "tqdm", "scipy", "sklearn", "matplotlib")


def _absent(name: str) -> bool:
    """Whether ``name`` cannot be imported, found without importing it (the command starts faster)."""
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


def main() -> None:
    missing = [name for name in _HARNESS if _absent(name)]
    if missing:
        sys.stderr.write(f"gradreg: the command needs the harness's packages ({', '.join(missing)} missing): "
                         "pip install 'gradreg[experiments]'\n")
        sys.exit(2)
    from .cli import main as cli_main

    cli_main()
