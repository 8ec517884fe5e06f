"""The ``gradreg`` command: train one run, run named experiments as sweeps, report and plot them."""
from __future__ import annotations

import sys
from typing import List, Optional

import typer

from . import _common
from ._common import app

# Each module registers its commands on ``app`` as it is imported; this order is the order of --help.
from . import run, experiments, reports  # noqa: E402,F401,I001

__all__ = ["app", "main"]


@app.callback()
def _process_options(
    flush_denormal: Optional[bool] = typer.Option(
        None, "--flush-denormal/--no-flush-denormal",
        help="flush subnormal floats to zero on CPU (default: on, or the GRADREG_FLUSH_DENORMAL "
             "environment variable): late training steps run several times faster, results agree to "
             "the last float digits (results/REPRODUCTION.md); sweep workers inherit it"),
) -> None:
    from ..numerics import set_default_flush_denormal

    # Set here, before any command runs torch, so that torch's intra-op threads inherit the mode.
    set_default_flush_denormal(flush_denormal)


def main(argv: Optional[List[str]] = None) -> None:
    """The console script: every error the user can fix is one line naming problem and fix, exit code 2;
    ``--debug`` (anywhere on the line) or GRADREG_DEBUG=1 shows the traceback instead."""
    import os

    from ..errors import user_message

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("GRADREG_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    _common._DEBUG = debug
    try:
        app(args=args, prog_name="gradreg")
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - mapped to one line, or re-raised as a bug
        message = user_message(exc)
        if debug or message is None:
            raise
        typer.secho(f"error: {message} (--debug shows the traceback)", fg=typer.colors.RED, err=True)
        sys.exit(2)
