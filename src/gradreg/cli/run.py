"""``gradreg train`` (one run) and ``gradreg demo`` (the main job on embedded data)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ._common import _fail, _parse_pairs, app


def _check_term_options(terms: list, batch_mode: str, n_projections: int) -> None:
    """Options that configure the gradient terms: valid, and not given without a term to configure."""
    if batch_mode not in ("batch", "sample"):
        raise ValueError(f"--batch-mode must be 'batch' or 'sample', got {batch_mode!r}")
    if n_projections < 1:
        raise ValueError(f"--n-projections must be >= 1, got {n_projections}")
    if not terms and (batch_mode != "batch" or n_projections != 1):
        given = "--batch-mode" if batch_mode != "batch" else "--n-projections"
        raise ValueError(f"{given} configures the gradient-regularization terms, and no --term is given; add "
                         "one (e.g. --term spectreg=0.03) or drop the option")


@app.command()
def train(
    dataset: str = typer.Option(
        "digits", help="sin, sin2, sin_lownoise, digits, mnist, cifar10, cifar100, tinyimagenet, npz"),
    train_size: Optional[int] = typer.Option(None, help="training points drawn from the pool (default: all)"),
    model: Optional[str] = typer.Option(None, help="model name (default: the dataset's)"),
    batchnorm: bool = typer.Option(False, help="BatchNorm in the model (Table 1)"),
    recipe: Optional[str] = typer.Option(None, help="recipe name (default: the dataset's)"),
    set_: List[str] = typer.Option([], "--set", help="recipe override KEY=VALUE, e.g. --set weight_decay=0"),
    term: List[str] = typer.Option([], "--term", help="a gradient-regularization term NAME=LAMBDA, repeatable, "
                                                       "e.g. --term spectreg=0.03"),
    reg: List[str] = typer.Option([], "--reg", hidden=True, help="the old spelling of --term"),
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
    from ..plugins import import_plugins
    from ..train import RunConfig, train as train_run
    from ..validate import check_device, check_overrides, check_runs

    pairs = _parse_pairs(set_, "--set")
    check_overrides(pairs)
    check_device(device)
    overrides = dict(pairs)
    if smoke:
        overrides.setdefault("steps", "20")
        overrides.setdefault("eval_points", "2")
    try:
        import_plugins(imports)
        terms = [(n, float(w)) for n, w in _parse_pairs(term, "--term") + _parse_pairs(reg, "--reg")]
        _check_term_options(terms, batch_mode, n_projections)
        config = RunConfig(dataset=dataset, train_size=train_size, model=model, batchnorm=batchnorm,
                           recipe=recipe, overrides=tuple(overrides.items()), terms=tuple(terms),
                           weight_convention=convention, batch_mode=batch_mode, n_projections=n_projections,
                           seed=seed, max_eval=500 if smoke else None)
    except ValueError as e:
        _fail(str(e))
    from ..data import DataError, load_dataset
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

    from ..data import load_dataset
    from ..train import RunConfig, train as train_run

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
