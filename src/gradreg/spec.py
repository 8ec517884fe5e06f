"""Your own experiment as a TOML file: swept, reported and plotted like the paper's named ones.

``gradreg sweep my_sweep.toml`` (and ``report``, ``plot``) takes a file where it takes a name. The file
describes an :class:`~gradreg.experiments.Experiment`: shared run settings, then one entry per cell
(a table cell, or a point of a λ curve)::

    name = "digits_reg"                 # optional, default: the file's stem; also the results
                                        # database's (results/digits_reg.db) and the figure's name
    title = "Gradient regularization on the 8x8 digits"
    seeds = 5                           # runs per cell, each on its own training subset (default 10)

    [run]                               # RunConfig fields every cell shares (not seed or terms)
    dataset = "digits"                  # or "npz" with --data-dir pointing at your .npz
    train_size = 300
    overrides = { steps = 400 }         # recipe fields (gradreg.recipes)

    [[cells]]
    row = "baseline"
    baseline = true                     # the reference of the significance tests (in its column)

    [[cells]]
    row = "SpectReg"
    term = "spectreg"
    lambda = 0.003                      # the λ of `--phase paper` (the stated λ)
    grid = [0.001, 0.003, 0.01]         # optional: λ selection on dev seeds (--phase grid / selected)

A λ curve instead of a table: one cell per value, in columns "0", "1", "3", "10"; λ = 0 is the
unregularized run and the reference of the curve's other points (as in Table 7; each curve its own,
where a file has several)::

    [[cells]]
    row = "DataGrad"
    term = "datagrad"
    lambdas = [0, 1, 3, 10]

Several columns that differ in their run settings (training-set sizes, say), and rows that run in every
column: list the columns once, with what sets each apart; a cell without a ``column`` then runs in each of
them, and its ``lambda`` may be a table giving each column its own λ (a column it leaves out falls back to
the cell's ``grid``, as above)::

    [[columns]]
    name = "500"
    run = { train_size = 500 }

    [[columns]]
    name = "5000"
    run = { train_size = 5000 }

    [[cells]]
    row = "DataGrad"
    term = "datagrad"
    lambda = { "500" = 300, "5000" = 100 }

A cell that names a ``column`` runs in that one only. Run settings merge file ``[run]``, then the
column's ``run``, then the cell's ``run``.

Your own model (or dataset, regularizer, recipe): register it in a Python file and list the file in
``imports``; it is imported when the file is read and in every sweep worker (:mod:`gradreg.plugins`)::

    imports = ["my_models.py"]          # .py paths are relative to this file; or installed module names

    [run]
    model = "wide_mlp"                  # registered by my_models.py with @gradreg.register_model

Top-level keys: ``name``, ``title``, ``source`` (default: the file's path), ``seeds``, ``kind``
(``"table"`` or ``"figure"``), ``notes``, ``metric`` (every cell's default: ``test_acc``, ``test_top5``,
``test_mse`` or ``train_mse``), ``order`` (``"entries"``, the default: cells in the order of their
entries, each entry's columns in turn; ``"columns"``: column by column, as a table is read), ``imports``,
``[run]``, ``[[columns]]`` (keys ``name`` and ``run``), ``[[cells]]`` and ``[[reports]]``. Cell keys:
``row`` (required), ``column`` (default: the dataset's name), ``term``, ``lambda``, ``lambdas``,
``grid``, ``tuned``, ``fallback_lambda``, ``baseline``, ``metric``, ``paper`` (a published ``[mean,
std]``, ``[mean]`` or bare mean to print beside yours; beside ``lambdas``, a list with one per λ) and
``run`` (RunConfig fields over the file's ``[run]``; ``overrides`` and ``terms`` are merged key by
key). ``terms = { confidence_penalty = 0.01 }`` in a ``run`` table adds regularizers at fixed weights
to every run of the cells it covers, besides each cell's own ``term``. ``tuned = true`` gives a cell
its term's registered λ grid (the paper's, for the built-in regularizers) unless it lists a ``grid``;
``tuned = false`` says its λ is fixed (no grid). A cell without a ``lambda`` runs ``fallback_lambda``
under ``--phase paper`` (the stated stand-in where the paper gives no λ), else its grid's middle
value (the upper one of an even grid). With ``[[columns]]``, ``lambda``, ``fallback_lambda`` and
``paper`` may be tables giving each column its own value; a scalar ``fallback_lambda`` beside a
``lambda`` table is the λ of the columns the table leaves out. ``[[reports]]`` list the tables
``gradreg reproduce`` writes from the file's runs (keys: :mod:`gradreg.reports`). Unknown keys,
values of the wrong type and names the paper's experiments use fail, naming the key and what is
valid.

The paper's own experiments are files in this format too: ``gradreg/paper/<name>.toml`` in the
installed package (:data:`PAPER_NAMES`, read by :func:`paper_experiments` into
:data:`gradreg.experiments.EXPERIMENTS`); they are the one place the paper's names may be used, and
their runs live in the database of their first cell's dataset (``results/mnist.db``) rather than
``results/<name>.db``.

Runs are keyed by their settings, not by the data file's contents; a sweep over an ``npz`` file
stores its sha256 beside each run and refuses to reuse runs of an earlier version of the file
(:func:`gradreg.data.data_fingerprint`). The default database is ``results/<name>.db``.
"""
from __future__ import annotations

import importlib.resources
import math
import re
import sys
from pathlib import Path
from typing import Any

from .experiment import Cell, Experiment
from .models import MODELS
from .plugins import import_plugins, resolve_imports
from .regularizers import regularizer_info
from .reports import REPORT_KEYS, report_from_dict
from .train import RunConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["load_experiment", "experiment_from_dict", "is_spec_path", "paper_experiments", "PAPER_NAMES"]

_TOP_KEYS = ("name", "title", "source", "seeds", "kind", "notes", "metric", "order", "imports", "run", "columns",
             "cells", "reports")
_COLUMN_KEYS = ("name", "run")
_CELL_KEYS = ("row", "column", "term", "lambda", "lambdas", "grid", "tuned", "fallback_lambda", "baseline", "metric",
              "paper", "run")
_PER_COLUMN = ("lambda", "fallback_lambda", "paper")  # cell keys a table may give per column
_ORDERS = ("entries", "columns")
# RunConfig's fields as TOML spells them; seed is set per run, and each cell's term and λ join ``terms``.
_RUN_TYPES: dict[str, type] = {"dataset": str, "train_size": int, "model": str, "batchnorm": bool, "recipe": str,
                               "overrides": dict, "terms": dict, "weight_convention": str, "batch_mode": str,
                               "n_projections": int, "max_eval": int}
_MERGED = ("overrides", "terms")  # run settings merged key by key
# The paper's experiments: one file each in the package's paper/ folder (package data), named as the
# experiment; listed in the paper's order (tables, figures, the poster's; investigations beside theirs).
_PAPER = importlib.resources.files("gradreg") / "paper"
PAPER_NAMES: tuple[str, ...] = (
    "table1", "table2", "table2_cp", "table3", "table4", "table5", "table6", "table7", "sin_lownoise",
    "figure2", "figure3", "figure4", "figure5", "figure6", "sin2", "poster_weight_decay", "poster_cp",
    "poster_tinyimagenet", "poster_tinyimagenet_top5")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def is_spec_path(name: str) -> bool:
    """True when ``name`` names an experiment file (``*.toml``) rather than a registered experiment;
    by suffix, not by what lies in the working directory, so ``table4`` always means the paper's."""
    return name.endswith(".toml")


def load_experiment(path: str | Path) -> Experiment:
    """The :class:`Experiment` a TOML file describes (format: this module's docstring)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8-sig"))  # TOML is UTF-8; editors may add a BOM
    except FileNotFoundError:
        raise ValueError(f"no experiment file at {path}") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from None
    try:
        return experiment_from_dict(data, name=path.stem, source=str(path), base=path.parent)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def paper_experiments() -> dict[str, Experiment]:
    """The paper's experiments, read from the files of the package's ``paper/`` folder, in the order of
    the paper (tables, figures, then the poster's; the investigations beside the table they extend)."""
    out = {}
    for name in PAPER_NAMES:
        text = (_PAPER / f"{name}.toml").read_text(encoding="utf-8")
        try:
            out[name] = _experiment(tomllib.loads(text), name=name, source="", base=None, paper=True)
        except (TypeError, ValueError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"gradreg/paper/{name}.toml: {e}") from None
    return out


def experiment_from_dict(data: dict[str, Any], *, name: str = "experiment", source: str = "",
                         base: str | Path | None = None) -> Experiment:
    """An :class:`Experiment` from a spec's parsed contents; ``name`` and ``source`` are the defaults,
    ``base`` the directory relative ``.py`` imports lie in (default: the current directory)."""
    return _experiment(data, name=name, source=source, base=base, paper=False)


def _experiment(data: dict[str, Any], *, name: str, source: str, base: str | Path | None,
                paper: bool) -> Experiment:
    """``experiment_from_dict``; ``paper``: one of the package's own files, which carry the paper's
    names and keep their runs in the database of their first cell's dataset."""
    _check_keys(_table(data, "the file"), _TOP_KEYS, "top level")
    name = _get(data, "name", str, "top level", name)
    reserved = name in PAPER_NAMES and not paper
    if not _NAME.fullmatch(name) or reserved:
        raise ValueError(f"name {name!r} " + ("is one of the paper's experiments" if reserved else
                                               "must be letters, digits, '_', '-' or '.'")
                         + "; set another with name = \"...\" (it names the results database and figures)")
    imports = data.get("imports", [])
    if not isinstance(imports, list):
        raise ValueError(f"imports must be a list of module names or .py files, got {imports!r}")
    imports = resolve_imports(imports, base)
    import_plugins(imports)  # before the checks below: they look the user's model up in the registry
    run = _settings({}, data.get("run", {}), "[run]")
    try:
        _run_config(run)  # the shared settings' errors, reported once and as theirs
    except (TypeError, ValueError) as e:
        raise ValueError(f"[run]: {e}") from None
    columns = _columns(data, run)
    cells_data = data.get("cells")
    if not isinstance(cells_data, list) or not cells_data:
        raise ValueError("needs at least one [[cells]] entry")
    metric = _get(data, "metric", str, "top level", "test_acc")
    order = _get(data, "order", str, "top level", "entries")
    if order not in _ORDERS:
        raise ValueError(f"order must be one of {', '.join(map(repr, _ORDERS))}, got {order!r}")
    if order == "columns" and not columns:
        raise ValueError("order = \"columns\" lists the cells column by column: it needs [[columns]]")
    cells: list[Cell] = []
    for i, entry in enumerate(cells_data):
        where = f"cells[{i}]"
        entry = _table(entry, where)
        _check_keys(entry, _CELL_KEYS, where)
        try:
            if "row" not in entry:
                raise ValueError("needs a row")
            for placed, shared in _per_column(entry, columns, run):
                try:
                    cells += _cells(placed, shared, metric)
                except (TypeError, ValueError) as e:
                    raise ValueError(f"column {placed['column']!r}: {e}" if columns else str(e)) from None
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None
    if order == "columns":  # stable: each column's cells in the order of their entries
        cells.sort(key=lambda c: list(columns).index(c.column))
    reports = data.get("reports", [])
    if not isinstance(reports, list):
        raise ValueError(f"reports must be one or more [[reports]] entries (keys: {', '.join(REPORT_KEYS)})")
    top = "top level"
    return Experiment(reports=tuple(report_from_dict(r, f"reports[{i}]") for i, r in enumerate(reports)),
                      name=name, title=_get(data, "title", str, top, name),
                      source=_get(data, "source", str, top, source), cells=tuple(cells),
                      seeds=_get(data, "seeds", int, top, 10), kind=_get(data, "kind", str, top, "table"),
                      notes=_get(data, "notes", str, top, ""), db_name=None if paper else name, imports=imports)


def _run_config(settings: dict[str, Any]) -> RunConfig:
    """The RunConfig of merged run settings (``terms``, a table of regularizer = λ, as pairs)."""
    terms = [(name, _number(lam, f"terms.{name}")) for name, lam in settings.get("terms", {}).items()]
    return RunConfig.from_dict(settings | {"terms": terms})


def _settings(run: dict[str, Any], value: Any, where: str) -> dict[str, Any]:
    """The run settings table ``value`` (named ``where`` in errors), checked, over ``run``'s with
    ``overrides`` merged key by key."""
    own = _table(value, where)
    _check_run(own, where)
    merged = run | own
    for key in _MERGED:
        if key in run or key in own:
            merged[key] = dict(run.get(key, {})) | dict(own.get(key, {}))
    return merged


def _columns(data: dict[str, Any], run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``[[columns]]``: each column's name and the run settings its cells share ([run] and its own)."""
    if "columns" not in data:
        return {}
    entries = data["columns"]
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"columns must be one or more [[columns]] entries (keys: {', '.join(_COLUMN_KEYS)}), "
                         f"got {entries!r}")
    out: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(entries):
        where = f"columns[{i}]"
        entry = _table(entry, where)
        _check_keys(entry, _COLUMN_KEYS, where)
        name = _get(entry, "name", str, where, None)
        if name is None:
            raise ValueError(f"{where}: needs a name")
        if name in out:
            raise ValueError(f"{where}: duplicate column name {name!r}")
        out[name] = _settings(run, entry.get("run", {}), f"{where}: run")
        try:
            _run_config(out[name])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None
    return out


def _per_column(entry: dict[str, Any], columns: dict[str, dict[str, Any]],
                run: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The cell entry once per column it runs in, each with that column's shared run settings: without
    [[columns]] the entry as written; with them every column, or the one it names, a ``lambda``,
    ``fallback_lambda`` or ``paper`` table giving each column its own value."""
    tables = [k for k in _PER_COLUMN if isinstance(entry.get(k), dict)]
    if not columns:
        if tables:
            raise ValueError(f"{tables[0]} as a table (one value per column) needs [[columns]]")
        return [(entry, run)]
    valid = ", ".join(map(repr, columns))
    if "lambdas" in entry:
        raise ValueError("lambdas (a λ curve: one column per value) goes without [[columns]]")
    if "column" in entry:
        name = _get(entry, "column", str, "", None)
        if name not in columns:
            raise ValueError(f"column {name!r} is not one of the [[columns]]: {valid}")
        names = [name]
    else:
        names = list(columns)
    for key in tables:
        unknown = sorted(set(entry[key]) - set(names))
        if unknown:
            raise ValueError(f"{key} names column(s) {', '.join(map(repr, unknown))} the cell does not run in; "
                             f"valid: {', '.join(map(repr, names))}")
    out = []
    for name in names:
        placed = dict(entry, column=name)
        for key in tables:
            del placed[key]
            if name in entry[key]:
                placed[key] = entry[key][name]
        if "lambda" in tables and "lambda" in placed and "fallback_lambda" not in tables:
            placed.pop("fallback_lambda", None)  # the stand-in is for the columns the lambda table leaves out
        out.append((placed, columns[name]))
    return out


def _cells(entry: dict[str, Any], run: dict[str, Any], metric: str) -> list[Cell]:
    config = _run_config(_settings(run, entry.get("run", {}), "run"))
    term = _get(entry, "term", str, "", None)
    tuned = _get(entry, "tuned", bool, "", None)
    if term is None and (tuned or "fallback_lambda" in entry):
        raise ValueError(f"{'tuned' if tuned else 'fallback_lambda'} needs a term")
    if term is not None and not ({"lambda", "lambdas", "fallback_lambda"} & set(entry) or entry.get("grid") or tuned):
        raise ValueError(f"term {term!r} needs a lambda, lambdas, a grid, fallback_lambda or tuned = true")
    if tuned is False and entry.get("grid"):
        raise ValueError("tuned = false (the λ is fixed) goes without a grid")
    grid = tuple(_numbers(entry, "grid"))
    if tuned and not grid:
        grid = regularizer_info(term).grid  # the term's registered grid (the paper's, for its regularizers)
        if not grid:
            raise ValueError(f"tuned = true takes the term's registered λ grid, and {term!r} registers none; "
                             f"give the cell a grid = [...]")
    common = dict(row=_get(entry, "row", str, "", ""), config=config, term=term,
                  metric=_get(entry, "metric", str, "", metric))
    if "lambdas" in entry:
        clash = sorted({"lambda", "grid", "column", "baseline", "tuned", "fallback_lambda"} & set(entry))
        if clash:
            raise ValueError(f"lambdas (a λ curve: one column per value, λ = 0 its reference) goes without "
                             f"{', '.join(clash)}")
        if term is None:
            raise ValueError("lambdas needs a term")
        values = _numbers(entry, "lambdas")
        if not values or values != sorted(set(values)):
            raise ValueError(f"lambdas must be increasing values >= 0, got {entry['lambdas']!r}")
        papers = [None] * len(values)
        if "paper" in entry:
            given = entry["paper"]
            if not isinstance(given, list) or len(given) != len(values):
                raise ValueError(f"paper beside lambdas must list one value per λ ({len(values)}): a mean or "
                                 f"[mean, std] each, got {given!r}")
            papers = [_paper(p, f"paper[{i}]") for i, p in enumerate(given)]
        return [Cell(column=f"{v:g}", paper_lambda=v, baseline=v == 0, paper=p, **common)
                for v, p in zip(values, papers)]
    lam = _number(entry["lambda"], "lambda") if "lambda" in entry else None
    if "fallback_lambda" in entry:
        if lam is not None:
            raise ValueError("fallback_lambda is the stand-in λ of a cell without a lambda; this one has one")
        fallback = _number(entry["fallback_lambda"], "fallback_lambda")
    else:
        fallback = grid[len(grid) // 2] if lam is None and grid else None
    paper = _paper(entry["paper"], "paper") if "paper" in entry else None
    return [Cell(column=_get(entry, "column", str, "", config.dataset), paper_lambda=lam, grid=grid,
                 fallback_lambda=fallback, paper=paper, baseline=_get(entry, "baseline", bool, "", False), **common)]


def _paper(value: Any, key: str) -> tuple[float, float | None]:
    """A published value: a mean, or ``[mean]`` / ``[mean, std]``."""
    values = value if isinstance(value, list) else [value]
    if not 1 <= len(values) <= 2:
        raise ValueError(f"{key} must be [mean] or [mean, std] (or the mean alone), got {value!r}")
    numbers = [_number(v, f"each value of {key}" if isinstance(value, list) else key) for v in values]
    return (numbers[0], numbers[1] if len(numbers) == 2 else None)


def _check_run(run: dict[str, Any], where: str) -> None:
    _check_keys(run, tuple(_RUN_TYPES), where)
    for key, kind in _RUN_TYPES.items():
        if key in run:
            _get(run, key, kind, where, None)
    if run.get("model") is not None and run["model"] not in MODELS:
        raise ValueError(f"{where}: unknown model {run['model']!r}; valid: {', '.join(sorted(MODELS))} (your own: "
                         f"register it in a .py file and list that in imports)")
    if run.get("batch_mode", "batch") not in ("batch", "sample"):
        raise ValueError(f"{where}: batch_mode must be 'batch' or 'sample', got {run['batch_mode']!r}")


_KINDS = {str: "a non-empty string", int: "an integer", bool: "true or false", dict: "a table of keys"}


def _get(d: dict[str, Any], key: str, kind: type, where: str, default: Any) -> Any:
    """``d[key]`` checked to be of ``kind`` (TOML's own types; bool is not an int here), else ``default``."""
    if key not in d:
        return default
    value = d[key]
    ok = (isinstance(value, bool) if kind is bool else isinstance(value, int) and not isinstance(value, bool)
          if kind is int else isinstance(value, kind) and (kind is not str or value != ""))
    if not ok:
        raise ValueError(f"{where + ': ' if where else ''}{key} must be {_KINDS[kind]}, got {value!r}")
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")
    return float(value)


def _numbers(entry: dict[str, Any], key: str) -> list[float]:
    values = entry.get(key, [])
    if not isinstance(values, list):
        raise ValueError(f"{key} must be a list of numbers, got {values!r}")
    return [_number(v, f"each value of {key}") for v in values]


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a table of keys, got {value!r}")
    return value


def _check_keys(d: dict[str, Any], valid: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
