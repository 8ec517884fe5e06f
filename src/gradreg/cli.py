"""The ``gradreg`` command: train one run, run named experiments as sweeps, report and plot them."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

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


def _check_term_options(terms: list, batch_mode: str, n_projections: int) -> None:
    """Options that configure the gradient terms: valid, and not given without a term to configure."""
    if batch_mode not in ("batch", "sample"):
        raise ValueError(f"--batch-mode must be 'batch' or 'sample', got {batch_mode!r}")
    if n_projections < 1:
        raise ValueError(f"--n-projections must be >= 1, got {n_projections}")
    if not terms and (batch_mode != "batch" or n_projections != 1):
        given = "--batch-mode" if batch_mode != "batch" else "--n-projections"
        raise ValueError(f"{given} configures the gradient-regularization terms, and no --reg is given; add "
                         "one (e.g. --reg spectreg=0.03) or drop the option")


_DEBUG = False  # set by main(): --debug shows tracebacks


def _fail(message: str) -> None:
    if _DEBUG and sys.exc_info()[1] is not None:
        raise  # noqa: PLE0704 - the exception being handled where _fail was called, with its traceback
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def train(
    dataset: str = typer.Option(
        "digits", help="sin, sin2, sin_lownoise, digits, mnist, cifar10, cifar100, tinyimagenet, npz"),
    train_size: Optional[int] = typer.Option(None, help="training points drawn from the pool (default: all)"),
    model: Optional[str] = typer.Option(None, help="model name (default: the dataset's)"),
    batchnorm: bool = typer.Option(False, help="BatchNorm in the model (Table 1)"),
    recipe: Optional[str] = typer.Option(None, help="recipe name (default: the dataset's)"),
    set_: List[str] = typer.Option([], "--set", help="recipe override KEY=VALUE, e.g. --set weight_decay=0"),
    reg: List[str] = typer.Option([], "--reg", help="regularizer NAME=LAMBDA, repeatable, e.g. --reg spectreg=0.03"),
    convention: str = typer.Option("paper", help="λ convention: 'paper' (as the paper's tables) or 'gradreg'"),
    batch_mode: str = typer.Option("batch", help="'batch' (paper's form) or 'sample' (exact per-sample)"),
    n_projections: int = typer.Option(1, help="random projections averaged per step"),
    seed: int = typer.Option(0),
    smoke: bool = typer.Option(False, help="a few steps on a few eval points, for tests"),
    data_dir: Optional[Path] = typer.Option(None, envvar="GRADREG_DATA_DIR", help="where dataset files lie"),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ..."),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    progress: bool = typer.Option(True, help="progress bar"),
    imports: List[str] = typer.Option([], "--import", help="a module name or .py file that registers your own "
                                                           "model, dataset or regularizer, repeatable"),
):
    """Train one run and print its metrics."""
    from .plugins import import_plugins
    from .train import RunConfig, train as train_run
    from .validate import check_device, check_overrides, check_runs

    pairs = _parse_pairs(set_, "--set")
    check_overrides(pairs)
    check_device(device)
    overrides = dict(pairs)
    if smoke:
        overrides.setdefault("steps", "20")
        overrides.setdefault("eval_points", "2")
    try:
        import_plugins(imports)
        terms = [(n, float(w)) for n, w in _parse_pairs(reg, "--reg")]
        _check_term_options(terms, batch_mode, n_projections)
        config = RunConfig(dataset=dataset, train_size=train_size, model=model, batchnorm=batchnorm,
                           recipe=recipe, overrides=tuple(overrides.items()), terms=tuple(terms),
                           weight_convention=convention, batch_mode=batch_mode, n_projections=n_projections,
                           seed=seed, max_eval=500 if smoke else None)
    except ValueError as e:
        _fail(str(e))
    from .data import DataError, load_dataset
    try:
        ds = load_dataset(config.dataset, data_dir)
        check_runs([config], lambda name: ds)
    except (DataError, ValueError) as e:
        _fail(str(e))
    result = train_run(config, dataset=ds, data_dir=data_dir, device=device, progress=progress and not as_json)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        typer.echo(f"{result.status} in {result.seconds:.1f}s  " + "  ".join(
            f"{k}={v:.4g}" for k, v in result.metrics.items()))
    raise typer.Exit(0 if result.status == "done" else 1)


@app.command()
def demo(seeds: int = typer.Option(3, min=1, help="runs per setting (different training subsets)"),
         progress: bool = typer.Option(True)):
    """The main job on embedded data: plain vs gradient-regularized LeNet on sklearn's 8x8 digits.

    300 training points, 600 Adam steps, each setting over ``seeds`` random training subsets; about
    half a minute on a 2-core CPU, no download. λ is smaller than the paper's MNIST values because
    the 8x8 inputs have 64 pixels instead of 784 (larger per-pixel gradients).
    """
    import statistics

    from tqdm.auto import tqdm

    from .data import load_dataset
    from .train import RunConfig, train as train_run

    settings = [("no gradient regularization", ()), ("spectreg λ=0.003", (("spectreg", 0.003),)),
                ("datagrad λ=3", (("datagrad", 3.0),))]
    ds = load_dataset("digits")
    configs = [(name, RunConfig(dataset="digits", train_size=300, terms=terms, seed=seed,
                                overrides=(("steps", 600),)))
               for name, terms in settings for seed in range(seeds)]
    accs: dict[str, list[float]] = {name: [] for name, _ in settings}
    for name, config in tqdm(configs, desc="demo runs", unit="run", disable=not progress):
        accs[name].append(train_run(config, dataset=ds, progress=False).metrics["test_acc"])
    typer.echo(f"\nLeNet-5 on 300 of sklearn's 8x8 digits, 600 steps, test set of 500, {seeds} seed(s):")
    typer.echo(f"{'setting':30s} {'test acc %  mean (std)':>24s}")
    for name, values in accs.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        typer.echo(f"{name:30s} {statistics.mean(values):15.2f} ({std:.2f})")


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
    from .experiments import get_experiment
    from .spec import is_spec_path, load_experiment
    try:
        exp = load_experiment(name) if is_spec_path(name) else get_experiment(name)
        exp = exp.with_overrides(dict(_parse_pairs(set_ or [], "--set")))
        # The reference row first, so that --row keeps the cells it is compared with.
        return exp.with_grid_window(grid_window).with_reference_row(against).with_rows(rows)
    except ValueError as e:
        _fail(str(e))


def _plan(exp, lambdas: str, seeds: Optional[int], smoke: bool, db: Path, dev_seeds: Optional[int] = None):
    """The runs of one sweep phase (gradreg.selection.plan_phase); 'selected' needs phase 1 (the grid on
    dev seeds) in ``db``."""
    from .selection import plan_phase
    from .store import ResultStore

    if lambdas not in ("paper", "grid", "selected"):
        _fail(f"--lambdas must be paper, grid or selected, got {lambdas!r}")
    try:
        if lambdas != "selected":
            return plan_phase(exp, None, lambdas=lambdas, seeds=seeds, dev_seeds=dev_seeds, smoke=smoke)[0]
        with ResultStore(db, readonly=True) as store:
            plan, best = plan_phase(exp, store, lambdas=lambdas, seeds=seeds, dev_seeds=dev_seeds, smoke=smoke)
    except ValueError as e:
        _fail(str(e))
    typer.echo("λ chosen on the dev set: " + ", ".join(f"{r}/{c}: {lam:g}" for (r, c), lam in best.items()))
    return plan


def _db(db: Optional[Path], exp, *, smoke: bool = False) -> Path:
    """``--db``, else results/<dataset>.db; for --smoke results/smoke/<dataset>.db, so that a pipeline
    check never lands among the runs a reproduction commits."""
    if db is not None:
        return db
    return (RESULTS_DIR / "smoke" if smoke else RESULTS_DIR) / f"{exp.database}.db"


def _refuse_smoke_beside_full_runs(db: Path) -> None:
    from .store import ResultStore
    if not db.exists():
        return
    with ResultStore(db, readonly=True) as store:
        full = store.count_full_runs()
    if full:
        _fail(f"--smoke would add pipeline-check runs to {db}, which holds {full} full run(s); give a scratch "
              f"--db (without --db, --smoke uses results/smoke/<dataset>.db)")


def _existing_store(db: Path, experiment: str):
    """The results store at ``db``, refusing to create an empty one where a report expects results."""
    from .store import ResultStore
    if not db.exists():
        _fail(f"no results database at {db}; run `gradreg sweep {experiment}` first (or pass --db)")
    return ResultStore(db, readonly=True)  # reading never writes: a read-only copy or folder works


LAMBDAS_HELP = ("paper: each cell at the paper's reported λ (an experiment file's stated lambda); grid: phase 1 "
                "of the λ selection (every grid λ on dev seeds); selected: phase 2 (the λ with the best mean "
                "dev metric, on test seeds)")


@app.command()
def experiments(lambdas: str = typer.Option("paper", help=LAMBDAS_HELP),
                seeds: Optional[int] = typer.Option(None, help="runs per cell (default: the experiment's)"),
                grid_window: Optional[int] = _window_option(),
                db: Optional[Path] = typer.Option(
                    None, help="count finished runs in this database (default: each experiment's own, "
                               "results/<dataset>.db, where it exists)")):
    """List the named experiments (the paper's tables and figures) with their size, cost and progress."""
    from .experiments import EXPERIMENTS, estimate_run_seconds
    from .store import ResultStore

    stores: dict[Path, ResultStore] = {}
    typer.echo(f"{'name':26s} {'runs':>6s} {'done':>6s} {'est. CPU h':>10s} {'left':>6s}  title")
    for name, exp in EXPERIMENTS.items():
        exp = exp.with_grid_window(grid_window)
        mode = "paper" if lambdas == "selected" else lambdas
        runs = exp.runs(lambdas=mode, seeds=seeds)
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
    lambdas: str = typer.Option("paper", help=LAMBDAS_HELP),
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
    from .sweep import default_workers, run_sweep
    from .validate import check_device, check_overrides

    check_overrides(_parse_pairs(set_, "--set"))
    check_device(device)
    if backend == "ray":
        from .ray_backend import import_ray
        import_ray()
    exp = _experiment(experiment, set_, grid_window, row)
    db = _db(db, exp, smoke=smoke)
    if smoke:
        _refuse_smoke_beside_full_runs(db)
    try:
        plan = _plan(exp, lambdas, seeds, smoke, db, dev_seeds)
    except ValueError as e:  # e.g. --seeds outside [1, DEV_SEED_OFFSET)
        _fail(str(e))
    n_workers = workers or default_workers(device)
    typer.echo(f"{exp.name}: {len(plan)} runs ({lambdas} λ), database {db}, {n_workers} worker(s) x {threads} thread(s)")
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


def _check_grid_options(lambdas: str, against: str | None, paired: bool) -> None:
    if lambdas == "grid" and (against or paired):
        _fail(f"{'--against' if against else '--paired'} is for the paper or selected phase; the grid phase "
              "compares each λ with the chosen one, paired over the dev seeds")


@app.command()
def report(
    experiment: str = typer.Argument(..., help=EXPERIMENT_HELP),
    lambdas: str = typer.Option("paper", help="paper, selected (the λ chosen on the dev set, on test seeds) "
                                              "or grid (phase 1: the dev metric of every grid λ, and the choice)"),
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
    from .report import markdown_grid_table, markdown_table, write_csv, write_grid_csv
    from .selection import collect, dev_seed_count, grid_stats

    exp = _experiment(experiment, set_, grid_window, row, against)
    db = _db(db, exp, smoke=smoke)
    if lambdas == "grid" and smoke:
        _fail("--smoke reports the paper or selected phase, not the grid")
    _check_grid_options(lambdas, against, paired)
    with _existing_store(db, experiment) as store:
        try:
            if lambdas == "grid":
                stats, chosen = grid_stats(exp, store, seeds=dev_seed_count(seeds, dev_seeds))
            else:
                stats = collect(exp, store, lambdas=lambdas, seeds=seeds, dev_seeds=dev_seeds, smoke=smoke,
                                paired=paired)
        except ValueError as e:
            _fail(str(e))
    text = markdown_grid_table(exp, stats, chosen) if lambdas == "grid" else markdown_table(exp, stats)
    typer.echo(text)
    if markdown:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text)
    if csv:
        if lambdas == "grid":
            write_grid_csv(exp, stats, chosen, csv)
        else:
            write_csv(exp, stats, csv)


@app.command()
def plot(
    experiment: str = typer.Argument(..., help=EXPERIMENT_HELP),
    lambdas: str = typer.Option("paper", help="paper, selected, or grid (phase 1: dev metric against λ, "
                                              "drawn as <experiment>_dev)"),
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
    from .plots import plot_experiment

    exp = _experiment(experiment, set_, grid_window, row, against)
    db = _db(db, exp)
    _check_grid_options(lambdas, against, paired)
    with _existing_store(db, experiment) as store:
        try:
            paths = plot_experiment(exp, store, out, lambdas=lambdas, seeds=seeds, dev_seeds=dev_seeds,
                                    paired=paired)
        except ValueError as e:
            _fail(str(e))
    typer.echo("wrote " + ", ".join(map(str, paths)))


@app.command()
def index(results: Path = typer.Option(Path("results"), help="the results folder")):
    """Write results/README.md (per paper item: verdict, tables, figures) and the summary table at the
    top of results/REPRODUCTION.md, from the committed report CSVs (gradreg.results_index)."""
    from .results_index import write_index

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
    phases = {"paper": 0, "grid": 1, "selected": 2}
    commands = []
    if sweep_first:
        sweeps = {}
        for r in sorted(exp.reports, key=lambda r: phases[r.lambdas]):
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
    lambdas: str = typer.Option("paper", help="paper or grid (selected needs a λ choice: use report)"),
    seeds: Optional[int] = typer.Option(None, help="runs per cell (default: the experiment's)"),
    metric: str = typer.Option("test_acc", help="the metric compared (a key of the runs' metrics)"),
    markdown: Optional[Path] = typer.Option(None, help="also write the table as Markdown here"),
):
    """Pair an experiment's runs finished in two databases by run key: what an execution setting
    (subnormal flushing, threads, machine) does to the numbers, seed by seed, and to the time."""
    from .compare import compare_stores, markdown_comparison

    exp = _experiment(experiment, [], None, [], None)
    if lambdas not in ("paper", "grid"):
        _fail(f"--lambdas must be paper or grid, got {lambdas!r}")
    plan = exp.plan(lambdas=lambdas, seeds=seeds)
    with _existing_store(db_a, experiment) as a, _existing_store(db_b, experiment) as b:
        try:
            text = markdown_comparison(compare_stores(plan, a, b, metric), str(db_a), str(db_b))
        except ValueError as e:
            _fail(str(e))
    typer.echo(text)
    if markdown:
        markdown.write_text(text + "\n")


@app.callback()
def _process_options(
    flush_denormal: Optional[bool] = typer.Option(
        None, "--flush-denormal/--no-flush-denormal",
        help="flush subnormal floats to zero on CPU (default: on, or the GRADREG_FLUSH_DENORMAL "
             "environment variable): late training steps run several times faster, results agree to "
             "the last float digits (results/REPRODUCTION.md); sweep workers inherit it"),
) -> None:
    from .numerics import set_default_flush_denormal

    # Set here, before any command runs torch, so that torch's intra-op threads inherit the mode.
    set_default_flush_denormal(flush_denormal)


def main(argv: Optional[List[str]] = None) -> None:
    """The console script: every error the user can fix is one line naming problem and fix, exit code 2;
    ``--debug`` (anywhere on the line) or GRADREG_DEBUG=1 shows the traceback instead."""
    import os

    from .errors import user_message

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("GRADREG_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    global _DEBUG
    _DEBUG = debug
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


if __name__ == "__main__":
    main()
