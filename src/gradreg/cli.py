"""The ``gradreg`` command: train one run, run named experiments as sweeps, report and plot them."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Gradient regularization for PyTorch: train, sweep, report, plot.")

DEFAULT_DB = Path("results") / "gradreg.db"


def _parse_pairs(items: list[str], what: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"{what} must look like NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        pairs.append((k.strip(), v.strip()))
    return pairs


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def train(
    dataset: str = typer.Option("digits", help="sin, sin2, digits, mnist, cifar10, cifar100, tinyimagenet, npz"),
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
):
    """Train one run and print its metrics."""
    from .train import RunConfig, train as train_run

    overrides = dict(_parse_pairs(set_, "--set"))
    if smoke:
        overrides.setdefault("steps", "20")
        overrides.setdefault("eval_points", "2")
    try:
        terms = [(n, float(w)) for n, w in _parse_pairs(reg, "--reg")]
        config = RunConfig(dataset=dataset, train_size=train_size, model=model, batchnorm=batchnorm,
                           recipe=recipe, overrides=tuple(overrides.items()), terms=tuple(terms),
                           weight_convention=convention, batch_mode=batch_mode, n_projections=n_projections,
                           seed=seed, max_eval=500 if smoke else None)
    except ValueError as e:
        _fail(str(e))
    from .data import DataError
    try:
        result = train_run(config, data_dir=data_dir, device=device, progress=progress and not as_json)
    except DataError as e:
        _fail(str(e))
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


def main() -> None:  # console script entry point
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
