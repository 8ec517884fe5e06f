"""``gradreg experiments`` (list them, with cost and progress) and ``gradreg sweep`` (run one)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ._common import (
    DB_HELP, EXPERIMENT_HELP, SET_HELP, _db, _dev_seeds_option, _experiment, _fail, _lambdas_option, _parse_pairs,
    _phase, _phase_option, _row_option, _window_option, app,
)


def _plan(exp, phase: str, seeds: Optional[int], smoke: bool, db: Path, dev_seeds: Optional[int] = None):
    """The runs of one sweep phase (gradreg.selection.plan_phase); 'selected' needs phase 1 (the grid on
    dev seeds) in ``db``."""
    from ..selection import plan_phase
    from ..store import ResultStore

    try:
        if phase != "selected":
            return plan_phase(exp, None, phase=phase, seeds=seeds, dev_seeds=dev_seeds, smoke=smoke)[0]
        with ResultStore(db, readonly=True) as store:
            plan, best = plan_phase(exp, store, phase=phase, seeds=seeds, dev_seeds=dev_seeds, smoke=smoke)
    except ValueError as e:
        _fail(str(e))
    typer.echo("λ chosen on the dev set: " + ", ".join(f"{r}/{c}: {lam:g}" for (r, c), lam in best.items()))
    return plan


def _refuse_smoke_beside_full_runs(db: Path) -> None:
    from ..store import ResultStore
    if not db.exists():
        return
    with ResultStore(db, readonly=True) as store:
        full = store.count_full_runs()
    if full:
        _fail(f"--smoke would add pipeline-check runs to {db}, which holds {full} full run(s); give a scratch "
              f"--db (without --db, --smoke uses results/smoke/<dataset>.db)")


@app.command()
def experiments(phase: str = _phase_option(),
                lambdas: Optional[str] = _lambdas_option(),
                seeds: Optional[int] = typer.Option(None, help="runs per cell (default: the experiment's)"),
                grid_window: Optional[int] = _window_option(),
                db: Optional[Path] = typer.Option(
                    None, help="count finished runs in this database (default: each experiment's own, "
                               "results/<dataset>.db, where it exists)")):
    """List the named experiments (the paper's tables and figures) with their size, cost and progress."""
    phase = _phase(phase, lambdas)
    from ..experiments import EXPERIMENTS, estimate_run_seconds
    from ..store import ResultStore

    stores: dict[Path, ResultStore] = {}
    typer.echo(f"{'name':26s} {'runs':>6s} {'done':>6s} {'est. CPU h':>10s} {'left':>6s}  title")
    for name, exp in EXPERIMENTS.items():
        exp = exp.with_grid_window(grid_window)
        mode = "paper" if phase == "selected" else phase
        runs = exp.runs(phase=mode, seeds=seeds)
        hours = sum(map(estimate_run_seconds, runs)) / 3600
        path = _db(db, exp)
        if path.exists():  # never create an empty database just to count nothing in it
            store = stores.setdefault(path, ResultStore(path, readonly=True))
            status = store.statuses([r.key() for r in runs])
            left = [r for r in runs if status.get(r.key()) not in ("done", "diverged")]
            done, left_h = f"{len(runs) - len(left):6d}", f"{sum(map(estimate_run_seconds, left)) / 3600:6.1f}"
        else:
            done, left_h = f"{'-':>6s}", f"{hours:6.1f}"
        typer.echo(f"{name:26s} {len(runs):6d} {done} {hours:10.1f} {left_h}  {exp.title} ({exp.source})")
    for store in stores.values():
        store.close()
    typer.echo("\nCost: rough single-core CPU hours from per-step timings of this project's 2-core machine; "
               "done: finished (or diverged) runs in the results database, left: the estimate for the rest.")


@app.command()
def sweep(
    experiment: str = typer.Argument(..., help=EXPERIMENT_HELP),
    phase: str = _phase_option(),
    lambdas: Optional[str] = _lambdas_option(),
    seeds: Optional[int] = typer.Option(None, help="runs per cell (default: the experiment's, 10)"),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP),
    grid_window: Optional[int] = _window_option(),
    dev_seeds: Optional[int] = _dev_seeds_option(),
    row: List[str] = _row_option(),
    db: Optional[Path] = typer.Option(None, help=DB_HELP),
    workers: Optional[int] = typer.Option(None, min=1, help="runs at once (default: one per core on CPU, 1 on CUDA)"),
    threads: int = typer.Option(1, min=1, help="torch threads per run"),
    group_size: Optional[int] = typer.Option(
        None, min=1, help="runs differing only in seed and λ trained together as one vectorized group of at most "
                   "this many (default: where measured to pay: SIN MLPs on CPU, small nets on CUDA); 1: never"),
    backend: str = typer.Option("local", help="local or ray"),
    address: Optional[str] = typer.Option(None, help="ray cluster address (default: start a local one)"),
    data_dir: Optional[Path] = typer.Option(None, envvar="GRADREG_DATA_DIR", help="where dataset files lie"),
    device: str = typer.Option("auto"),
    retry_failed: bool = typer.Option(False, help="train runs recorded as failed again"),
    smoke: bool = typer.Option(False, help="a few steps per run, one seed: checks the whole pipeline"),
    progress: bool = typer.Option(True),
):
    """Run an experiment's runs into the database, skipping those already there (resumable)."""
    phase = _phase(phase, lambdas)
    from ..sweep import default_workers, run_sweep
    from ..validate import check_device, check_overrides

    check_overrides(_parse_pairs(set_, "--set"))
    check_device(device)
    if backend == "ray":
        from ..ray_backend import import_ray
        import_ray()
    exp = _experiment(experiment, set_, grid_window, row)
    db = _db(db, exp, smoke=smoke)
    if smoke:
        _refuse_smoke_beside_full_runs(db)
    try:
        plan = _plan(exp, phase, seeds, smoke, db, dev_seeds)
    except ValueError as e:  # e.g. --seeds outside [1, DEV_SEED_OFFSET)
        _fail(str(e))
    n_workers = workers or default_workers(device)
    typer.echo(f"{exp.name}: {len(plan)} runs ({phase} λ), database {db}, {n_workers} worker(s) x {threads} thread(s)")
    try:
        summary = run_sweep([p.config for p in plan], db, workers=n_workers, threads=threads, backend=backend,
                            address=address, data_dir=data_dir, device=device, retry_failed=retry_failed,
                            group_size=group_size, progress=progress, imports=exp.imports)
    except ValueError as e:
        _fail(str(e))
    typer.echo(f"{summary.total} runs: {summary.skipped} already in the database, {summary.done} done, "
               f"{summary.diverged} diverged, {summary.failed} failed, {summary.busy} left to another "
               f"sweep, in {summary.seconds:.0f}s")
    _explain_failures(summary, db)
    raise typer.Exit(1 if summary.failed or summary.failed_before else 0)


def _explain_failures(summary, db: Path) -> None:
    """Why runs failed (one line per distinct cause), and what to do about runs that failed before."""
    if summary.failures:
        typer.echo(f"{summary.failed} run(s) failed; causes (first line of each distinct error):", err=True)
        for cause, count, key in summary.failures:
            typer.echo(f"  {count} x {cause}  (e.g. run {key})", err=True)
        typer.echo(f"  full tracebacks: the error column of {db}; fix the cause, then rerun with --retry-failed",
                   err=True)
    if summary.failed_before:
        typer.echo(f"{summary.failed_before} run(s) failed in an earlier sweep and were not trained again; "
                   "rerun with --retry-failed to train them", err=True)
    if summary.other_status:
        typer.echo(f"{summary.other_status} run(s) have a status this gradreg does not know (written by another "
                   "program or a newer gradreg); left as they are", err=True)
