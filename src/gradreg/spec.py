"""Your own experiment as a TOML file: swept, reported and plotted like the paper's named ones.

``gradreg sweep my_sweep.toml`` (and ``report``, ``plot``) takes a file where it takes a name. The file
describes an :class:`~gradreg.experiments.Experiment`: shared run settings, then one entry per cell
(a table cell, or a point of a λ curve)::

    name = "digits_reg"                 # optional, default: the file's stem
    title = "Gradient regularization on the 8x8 digits"
    seeds = 5                           # runs per cell, each on its own training subset (default 10)

    [run]                               # RunConfig fields every cell shares (not seed or terms)
    dataset = "digits"                  # or "npz" with --data-dir pointing at your .npz
    train_size = 300
    overrides = { steps = 400 }         # recipe fields (gradreg.recipes)

    [[cells]]
    row = "baseline"
    baseline = true                     # the reference of the significance tests in its column

    [[cells]]
    row = "SpectReg"
    term = "spectreg"
    lambda = 0.003                      # the λ of `--lambdas paper` (the stated λ)
    grid = [0.001, 0.003, 0.01]         # optional: λ selection on dev seeds (--lambdas grid / selected)

A λ curve instead of a table: one cell per value, in columns "0", "1", "3", "10"; λ = 0 is the
unregularized run and, without a ``baseline`` cell, the reference of the others (as in Table 7)::

    [[cells]]
    row = "DataGrad"
    term = "datagrad"
    lambdas = [0, 1, 3, 10]

Cell keys: ``row`` (required), ``column`` (default: the dataset's name), ``term``, ``lambda``,
``lambdas``, ``grid``, ``baseline``, ``metric`` (default: the file's ``metric``, else ``test_acc``),
``paper`` (a published ``[mean, std]`` to print beside yours) and ``run`` (RunConfig fields over the
file's ``[run]``; ``overrides`` are merged key by key). A cell with a ``grid`` but no ``lambda`` runs the
grid's middle value under ``--lambdas paper``. Unknown keys fail, listing the valid ones.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from .experiments import Cell, Experiment
from .train import RunConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["load_experiment", "experiment_from_dict", "is_spec_path"]

_TOP_KEYS = ("name", "title", "source", "seeds", "kind", "notes", "metric", "run", "cells")
_CELL_KEYS = ("row", "column", "term", "lambda", "lambdas", "grid", "baseline", "metric", "paper", "run")
# seed is set per run and terms by each cell's term and λ: a spec that set them would be ignored.
_RUN_KEYS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in ("seed", "terms"))


def is_spec_path(name: str) -> bool:
    """True when ``name`` names an experiment file (``*.toml``) rather than a registered experiment;
    by suffix, not by what lies in the working directory, so ``table4`` always means the paper's."""
    return name.endswith(".toml")


def load_experiment(path: str | Path) -> Experiment:
    """The :class:`Experiment` a TOML file describes (format: this module's docstring)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"no experiment file at {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from None
    try:
        return experiment_from_dict(data, name=path.stem, source=str(path))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def experiment_from_dict(data: dict[str, Any], *, name: str = "experiment", source: str = "") -> Experiment:
    """An :class:`Experiment` from a spec's parsed contents; ``name`` and ``source`` are the defaults."""
    _check_keys(data, _TOP_KEYS, "top level")
    run = _section(data.get("run", {}), "[run]")
    _check_keys(run, _RUN_KEYS, "[run]")
    cells_data = data.get("cells")
    if not isinstance(cells_data, list) or not cells_data:
        raise ValueError("needs at least one [[cells]] entry")
    metric = data.get("metric", "test_acc")
    cells: list[Cell] = []
    for i, entry in enumerate(cells_data):
        where = f"cells[{i}]"
        entry = _section(entry, where)
        _check_keys(entry, _CELL_KEYS, where)
        try:
            cells += _cells(entry, run, metric)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None
    if not any(c.baseline for c in cells):
        lam0 = [c for c in cells if c.term and c.paper_lambda == 0]
        if len(lam0) == 1:  # a single λ curve's 0 is its reference, as Table 7's
            cells = [dataclasses.replace(c, baseline=True) if c is lam0[0] else c for c in cells]
    return Experiment(name=str(data.get("name", name)), title=str(data.get("title", data.get("name", name))),
                      source=str(data.get("source", source)), cells=tuple(cells), seeds=int(data.get("seeds", 10)),
                      kind=str(data.get("kind", "table")), notes=str(data.get("notes", "")))


def _cells(entry: dict[str, Any], run: dict[str, Any], metric: str) -> list[Cell]:
    if "row" not in entry:
        raise ValueError("needs a row")
    own = _section(entry.get("run", {}), "run")
    _check_keys(own, _RUN_KEYS, "run")
    merged = run | own
    if "overrides" in run or "overrides" in own:
        merged["overrides"] = dict(run.get("overrides", {})) | dict(own.get("overrides", {}))
    config = RunConfig.from_dict(merged)
    term = entry.get("term")
    if term is not None and not {"lambda", "lambdas", "grid"} & set(entry):
        raise ValueError(f"term {term!r} needs a lambda, lambdas or a grid")
    grid = tuple(entry.get("grid", ()))
    paper = entry.get("paper")
    if paper is not None:
        if not isinstance(paper, list) or not 1 <= len(paper) <= 2:
            raise ValueError(f"paper must be [mean] or [mean, std], got {paper!r}")
        paper = (float(paper[0]), float(paper[1]) if len(paper) == 2 else None)
    common = dict(row=str(entry["row"]), config=config, term=term, paper=paper,
                  baseline=bool(entry.get("baseline", False)), metric=str(entry.get("metric", metric)))
    if "lambdas" in entry:
        if "lambda" in entry or "grid" in entry or "column" in entry:
            raise ValueError("lambdas (a λ curve) goes without lambda, grid and column")
        if term is None:
            raise ValueError("lambdas needs a term")
        values = [float(v) for v in entry["lambdas"]]
        if not values or values != sorted(set(values)) or values[0] < 0:
            raise ValueError(f"lambdas must be increasing values >= 0, got {entry['lambdas']!r}")
        return [Cell(column=f"{v:g}", paper_lambda=v, **common) for v in values]
    lam = entry.get("lambda")
    fallback = grid[len(grid) // 2] if lam is None and grid else None
    return [Cell(column=str(entry.get("column", config.dataset)), paper_lambda=None if lam is None else float(lam),
                 grid=grid, fallback_lambda=fallback, **common)]


def _section(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a table of keys, got {value!r}")
    return value


def _check_keys(d: dict[str, Any], valid: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
