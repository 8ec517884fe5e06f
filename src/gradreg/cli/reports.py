"""``gradreg report``, ``plot``, ``index``, ``reproduce`` and ``compare``: tables and figures from
the results databases."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ._common import (
    DB_HELP, EXPERIMENT_HELP, RESULTS_DIR, SET_HELP, _against_option, _db, _dev_seeds_option, _existing_store,
    _experiment, _fail, _lambdas_option, _paired_option, _phase, _phase_option, _row_option, _window_option, app,
)


def _check_grid_options(phase: str, against: str | None, paired: bool) -> None:
    if phase == "grid" and (against or paired):
        _fail(f"{'--against' if against else '--paired'} is for the paper or selected phase; the grid phase "
              "compares each λ with the chosen one, paired over the dev seeds")


@app.command()
def report(
    experiment: str = typer.Argument(..., help=EXPERIMENT_HELP),
    phase: str = _phase_option("paper, selected (the λ chosen on the dev set, on test seeds) "
                               "or grid (phase 1: the dev metric of every grid λ, and the choice)"),
    lambdas: Optional[str] = _lambdas_option(),
    seeds: Optional[int] = typer.Option(None),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP),
    grid_window: Optional[int] = _window_option(),
    dev_seeds: Optional[int] = _dev_seeds_option(),
    row: List[str] = _row_option(),
    against: Optional[str] = _against_option(),
    paired: bool = _paired_option(),
    db: Optional[Path] = typer.Option(None, help=DB_HELP),
    csv: Optional[Path] = typer.Option(None, help="also write the table as CSV here"),
    markdown: Optional[Path] = typer.Option(None, help="also write the table as Markdown here"),
    smoke: bool = typer.Option(False, help="report a --smoke sweep"),
):
    """Print an experiment's table: ours mean (std) n beside the paper's, with significance."""
    phase = _phase(phase, lambdas)
    from ..report import markdown_grid_table, markdown_table, write_csv, write_grid_csv
    from ..selection import collect, dev_seed_count, grid_stats

    exp = _experiment(experiment, set_, grid_window, row, against)
    db = _db(db, exp, smoke=smoke)
    if phase == "grid" and smoke:
        _fail("--smoke reports the paper or selected phase, not the grid")
    _check_grid_options(phase, against, paired)
    with _existing_store(db, experiment) as store:
        try:
            if phase == "grid":
                stats, chosen = grid_stats(exp, store, seeds=dev_seed_count(seeds, dev_seeds))
            else:
                stats = collect(exp, store, phase=phase, seeds=seeds, dev_seeds=dev_seeds, smoke=smoke,
                                paired=paired)
        except ValueError as e:
            _fail(str(e))
    text = markdown_grid_table(exp, stats, chosen) if phase == "grid" else markdown_table(exp, stats)
    typer.echo(text)
    if markdown:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text)
    if csv:
        if phase == "grid":
            write_grid_csv(exp, stats, chosen, csv)
        else:
            write_csv(exp, stats, csv)


@app.command()
def plot(
    experiment: str = typer.Argument(..., help=EXPERIMENT_HELP),
    phase: str = _phase_option("paper, selected, or grid (phase 1: dev metric against λ, "
                               "drawn as <experiment>_dev)"),
    lambdas: Optional[str] = _lambdas_option(),
    seeds: Optional[int] = typer.Option(None),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP),
    grid_window: Optional[int] = _window_option(),
    dev_seeds: Optional[int] = _dev_seeds_option(),
    row: List[str] = _row_option(),
    against: Optional[str] = _against_option(),
    paired: bool = _paired_option(),
    db: Optional[Path] = typer.Option(None, help=DB_HELP),
    out: Path = typer.Option(Path("results") / "figures", help="folder for the PNG and SVG files"),
):
    """Draw an experiment's figure (PNG and SVG) from the database."""
    phase = _phase(phase, lambdas)
    from ..plots import plot_experiment

    exp = _experiment(experiment, set_, grid_window, row, against)
    db = _db(db, exp)
    _check_grid_options(phase, against, paired)
    with _existing_store(db, experiment) as store:
        try:
            paths = plot_experiment(exp, store, out, phase=phase, seeds=seeds, dev_seeds=dev_seeds,
                                    paired=paired)
        except ValueError as e:
            _fail(str(e))
    typer.echo("wrote " + ", ".join(map(str, paths)))


@app.command()
def index(results: Path = typer.Option(Path("results"), help="the results folder")):
    """Write results/README.md (per paper item: verdict, tables, figures) and the summary table at the
    top of results/REPRODUCTION.md, from the committed report CSVs (gradreg.results_index)."""
    from ..results_index import write_index

    try:
        paths = write_index(results)
    except (OSError, ValueError, KeyError) as e:
        _fail(f"{type(e).__name__}: {e}")
    typer.echo("wrote " + ", ".join(map(str, paths)))


@app.command()
def reproduce(
    experiment: str = typer.Argument(..., help=EXPERIMENT_HELP),
    results: Path = typer.Option(RESULTS_DIR, help="the results folder its tables and databases lie in"),
    sweep_first: bool = typer.Option(False, "--sweep", help="first run (or resume) the sweeps the tables "
                                     "need, each λ-selection phase before the next"),
    data_dir: Optional[Path] = typer.Option(None, envvar="GRADREG_DATA_DIR", help="where dataset files lie"),
    workers: Optional[int] = typer.Option(None, min=1, help="runs at once (--sweep)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the commands, run nothing"),
):
    """Regenerate every committed table of an experiment (its reports: results/<table>.md and .csv)
    from its databases; with --sweep, train what they need first."""
    import shlex

    from typer.main import get_command

    exp = _experiment(experiment, [], None, [], None)
    if not exp.reports:
        _fail(f"{experiment} lists no reports; an experiment file lists them as [[reports]] entries "
              "(see gradreg.reports), or use `gradreg report`")
    phases = {"paper": 0, "dev": 0, "grid": 1, "selected": 2}
    commands = []
    if sweep_first:
        sweeps = {}
        for r in sorted(exp.reports, key=lambda r: phases[r.phase]):
            args = [a for a in r.arguments() if a != "--paired"]
            if r.against:
                i = args.index("--against")
                del args[i:i + 2]
            db = str(results / r.database(exp.database))
            sweeps.setdefault((db, *args), ["sweep", experiment, *args, "--db", db]
                              + (["--data-dir", str(data_dir)] if data_dir else [])
                              + (["--workers", str(workers)] if workers else []))
        commands += list(sweeps.values())
    for r in exp.reports:
        commands.append(["report", experiment, *r.arguments(), "--db", str(results / r.database(exp.database)),
                         "--markdown", str(results / f"{r.table}.md"), "--csv", str(results / f"{r.table}.csv")])
    cli = get_command(app)
    for cmd in commands:
        typer.echo("$ gradreg " + shlex.join(cmd))
        if not dry_run:
            cli.main(cmd, prog_name="gradreg", standalone_mode=False)


@app.command()
def compare(
    db_a: Path = typer.Argument(..., help="results database A (e.g. runs trained with one setting)"),
    db_b: Path = typer.Argument(..., help="results database B (the same runs trained with another)"),
    experiment: str = typer.Argument(..., help=EXPERIMENT_HELP),
    phase: str = _phase_option("paper or grid (selected needs a λ choice: use report)"),
    lambdas: Optional[str] = _lambdas_option(),
    seeds: Optional[int] = typer.Option(None, help="runs per cell (default: the experiment's)"),
    metric: str = typer.Option("test_acc", help="the metric compared (a key of the runs' metrics)"),
    markdown: Optional[Path] = typer.Option(None, help="also write the table as Markdown here"),
):
    """Pair an experiment's runs finished in two databases by run key: what an execution setting
    (subnormal flushing, threads, machine) does to the numbers, seed by seed, and to the time."""
    phase = _phase(phase, lambdas, ("paper", "grid"))
    from ..compare import compare_stores, markdown_comparison

    exp = _experiment(experiment, [], None, [], None)
    plan = exp.plan(phase=phase, seeds=seeds)
    with _existing_store(db_a, experiment) as a, _existing_store(db_b, experiment) as b:
        try:
            text = markdown_comparison(compare_stores(plan, a, b, metric), str(db_a), str(db_b))
        except ValueError as e:
            _fail(str(e))
    typer.echo(text)
    if markdown:
        markdown.write_text(text + "\n")
