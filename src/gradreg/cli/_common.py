"""What the ``gradreg`` commands share: the app, error reporting, option definitions, and finding an
experiment and its results database."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Gradient regularization for PyTorch: train, sweep, report, plot.")

RESULTS_DIR = Path("results")
DB_HELP = ("results database (SQLite; default: results/<dataset>.db, e.g. results/mnist.db; with --smoke "
           "results/smoke/<dataset>.db)")


def _parse_pairs(items: list[str], what: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"{what} must look like NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        pairs.append((k.strip(), v.strip()))
    return pairs


_DEBUG = False  # set by main(): --debug shows tracebacks


def _fail(message: str) -> None:
    if _DEBUG and sys.exc_info()[1] is not None:
        raise  # noqa: PLE0704 - the exception being handled where _fail was called, with its traceback
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


SET_HELP = "recipe override KEY=VALUE for every run, repeatable, e.g. --set lr=0.001"
WINDOW_HELP = ("λ selection on part of the grid: each tuned cell's 2K+1 grid values nearest its paper λ (log "
               "scale); give the same K to the grid and selected phases (default: the whole grid)")


def _dev_seeds_option():
    return typer.Option(None, "--dev-seeds", min=1,
                        help="dev seeds per grid λ: the grid phase runs them, the selection reads them "
                             "(default: --seeds, else the experiment's)")


def _window_option():
    return typer.Option(None, "--grid-window", min=0, metavar="K", help=WINDOW_HELP)


EXPERIMENT_HELP = "a name from `gradreg experiments`, or your own experiment file (my_sweep.toml: see gradreg.spec)"


def _row_option():
    return typer.Option([], "--row", help="only this row of the table (a method, e.g. SpectReg), repeatable; "
                                          "the baselines are kept for the comparisons (default: every row)")


def _against_option():
    return typer.Option(None, "--against", metavar="ROW",
                        help="compare each cell with this row's cell of its column instead of the baseline "
                             "(p, the CSV's delta, the plot's gains), e.g. --against SpectReg; not for "
                             "the grid phase")


def _paired_option():
    return typer.Option(False, "--paired",
                        help="p-values (and the plot's gain error bars) from a paired t-test over the seeds "
                             "each cell shares with its reference, not Welch's test: a seed draws the same "
                             "training subset, init and batch order in every cell of a column; not for the "
                             "grid phase, which pairs already")


def _experiment(name: str, set_: list[str] | None = None, grid_window: int | None = None,
                rows: list[str] | None = None, against: str | None = None):
    from ..experiments import get_experiment
    from ..spec import is_spec_path, load_experiment
    try:
        exp = load_experiment(name) if is_spec_path(name) else get_experiment(name)
        exp = exp.with_overrides(dict(_parse_pairs(set_ or [], "--set")))
        # The reference row first, so that --row keeps the cells it is compared with.
        return exp.with_grid_window(grid_window).with_reference_row(against).with_rows(rows)
    except ValueError as e:
        _fail(str(e))


def _db(db: Optional[Path], exp, *, smoke: bool = False) -> Path:
    """``--db``, else results/<dataset>.db; for --smoke results/smoke/<dataset>.db, so that a pipeline
    check never lands among the runs a reproduction commits."""
    if db is not None:
        return db
    return (RESULTS_DIR / "smoke" if smoke else RESULTS_DIR) / f"{exp.database}.db"


def _existing_store(db: Path, experiment: str):
    """The results store at ``db``, refusing to create an empty one where a report expects results."""
    from ..store import ResultStore
    if not db.exists():
        _fail(f"no results database at {db}; run `gradreg sweep {experiment}` first (or pass --db)")
    return ResultStore(db, readonly=True)  # reading never writes: a read-only copy or folder works


PHASE_HELP = ("paper: each cell at the paper's reported λ (an experiment file's stated lambda); dev: the same "
              "runs on dev seeds, scored on the dev set (probes); grid: phase 1 "
              "of the λ selection (every grid λ on dev seeds); selected: phase 2 (the λ with the best mean "
              "dev metric, on test seeds)")
LAMBDAS_HELP = PHASE_HELP  # the option's help under its old name, for importers


def _phase_option(help: str = PHASE_HELP):
    return typer.Option("paper", "--phase", help=help)


def _lambdas_option():
    """``--lambdas``: the old spelling of ``--phase``, kept working for scripts, hidden from --help."""
    return typer.Option(None, "--lambdas", hidden=True, help="the old spelling of --phase")


def _phase(phase: str, lambdas: Optional[str], allowed: tuple[str, ...] = ("paper", "dev", "grid", "selected")) -> str:
    """The phase given as ``--phase`` or its old spelling ``--lambdas``; errors name the spelling used."""
    flag, given = ("--lambdas", lambdas) if lambdas is not None else ("--phase", phase)
    if lambdas is not None and phase not in ("paper", lambdas):
        _fail(f"--phase {phase} and --lambdas {lambdas} disagree; give --phase alone (--lambdas is its old spelling)")
    if given not in allowed:
        _fail(f"{flag} must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {given!r}")
    return given
