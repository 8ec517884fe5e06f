"""Tables from the results store: each cell mean (std) over n runs, the paper's value beside it, as
Markdown and CSV. The statistics and the λ selection are :mod:`gradreg.selection`'s; this module only
formats them (and re-exports the selection's names that callers import from here).
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Iterable

from .experiments import GRIDS, Cell, Experiment
from .selection import (ALPHA, CellStats, collect, dev_metric, dev_seed_count, grid_stats, higher_is_better,
                        paired_p, select_lambdas, task_metric, welch_p)

__all__ = ["CellStats", "collect", "select_lambdas", "grid_stats", "markdown_table", "markdown_grid_table",
           "write_csv", "write_grid_csv", "at_window_edge", "dev_metric", "higher_is_better", "paired_p", "welch_p",
           "dev_seed_count", "task_metric", "ALPHA"]


def _fmt(value: float | None, std: float | None, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    scale, digits = (1e5, 1) if metric.endswith("mse") else (1.0, 2)
    s = f"{value * scale:.{digits}f}"
    if std is not None and not math.isnan(std):
        s += f" ({std * scale:.{digits}f})"
    return s


def _runs_text(st: CellStats, metric: str) -> str:
    """``mean (std) n=N`` and whatever did not finish: diverged, failed, missing runs."""
    text = f"{_fmt(st.mean if st.n else None, st.std, metric)} n={st.n}"
    for label, count in (("div", st.diverged), ("failed", st.failed), ("missing", st.missing)):
        if count:
            text += f" {label}={count}"
    return text


def _cell_text(st: CellStats, show_paper: bool = True) -> str:
    metric = st.shown_metric
    text = _runs_text(st, metric)
    if st.p_value is not None:
        text += f" p={st.p_value:.2g}{'*' if st.significant else ''}"
    paper = st.cell.paper
    if show_paper:
        text += f" · paper {_fmt(paper[0], paper[1], metric) if paper else '–'}"
    if st.lam is not None and st.cell.term:
        text += f" · λ={st.lam:g}"
    return text


def _reference_text(experiment: Experiment) -> str:
    """What the table's p-values compare with, in words (:meth:`Experiment.reference`)."""
    pairs = [(c, ref) for c in experiment.cells if (ref := experiment.reference(c)) is not None]
    if all(ref.column == c.column for c, ref in pairs):
        return f"the column's {experiment.reference_row} cell" if experiment.reference_row else "the column's baseline"
    if all(ref.row == c.row and ref.term is not None and ref.paper_lambda == 0 for c, ref in pairs):
        return "λ = 0" if len({ref.key for _, ref in pairs}) == 1 else "the row's λ = 0 (each λ curve's own)"
    if len({ref.key for _, ref in pairs}) == 1:
        ref = pairs[0][1]
        return f"the {ref.row} cell" + (f" ({ref.column})" if len(experiment.columns) > 1 else "")
    return "the cell's baseline (its column's, else its row's, else the table's only one)"


def markdown_table(experiment: Experiment, stats: list[CellStats]) -> str:
    """The experiment in the paper's layout: methods as rows, setups as columns."""
    by = {st.cell.key: st for st in stats}
    metric = next((st.shown_metric for st in stats if st.n), experiment.cells[0].metric)
    unit = " (MSE in 1e-5)" if metric.endswith("mse") else " (%)" if "acc" in metric or "top5" in metric else ""
    show_paper = experiment.has_paper_values  # else no column of dashes
    paper_note = " · the paper's value" if show_paper else ""
    test = ("a paired t-test over the seeds both cells have" if any(st.test == "paired" for st in stats)
            else "Welch's t-test")
    on_dev = f" on dev seeds, scored on the dev set ({metric})" if metric.startswith("dev_") else ""
    lines = [f"### {experiment.name}: {experiment.title}{unit}", "",
             f"Source: {experiment.source}. Cells: ours mean (std) over n runs{on_dev}{paper_note}. "
             f"p: {test} against {_reference_text(experiment)}, Bonferroni-corrected over the table's "
             f"comparisons; * marks p < {ALPHA}.", ""]
    cols = experiment.columns
    lines.append("| | " + " | ".join(cols) + " |")
    lines.append("|---" * (len(cols) + 1) + "|")
    for row in experiment.rows:
        cells = [(_cell_text(by[(row, c)], show_paper) if (row, c) in by else "") for c in cols]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["experiment", "row", "column", "metric", "term", "lambda", "n", "mean", "std", "diverged",
              "failed", "missing", "p_bonferroni", "test", "delta", "reference", "paper_mean", "paper_std", "seeds"]


def csv_rows(experiment: Experiment, stats: list[CellStats]) -> list[dict]:
    out = []
    for st in stats:
        paper = st.cell.paper or (None, None)
        ref = experiment.reference(st.cell)  # what p_bonferroni and delta compare with: "row / column"
        out.append({"experiment": experiment.name, "row": st.cell.row, "column": st.cell.column,
                    "metric": st.shown_metric, "term": st.cell.term or "", "lambda": st.lam,
                    "n": st.n, "mean": st.mean if st.n else None, "std": st.std if st.n > 1 else None,
                    "diverged": st.diverged, "failed": st.failed, "missing": st.missing,
                    "p_bonferroni": st.p_value, "test": st.test, "delta": st.delta,
                    "reference": f"{ref.row} / {ref.column}" if ref else "", "paper_mean": paper[0],
                    "paper_std": paper[1], "seeds": " ".join(map(str, st.seeds))})
    return out


def write_csv(experiment: Experiment, stats: list[CellStats], path: str | Path | None = None) -> str:
    return _write_csv(CSV_FIELDS, csv_rows(experiment, stats), path)


def _write_csv(fields: list[str], rows: Iterable[dict], path: str | Path | None) -> str:
    """``rows`` as CSV text, also written to ``path`` when given."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(buf.getvalue())
    return buf.getvalue()


def _seed_span(stats: list[CellStats]) -> str:
    seeds = sorted({s for st in stats for s in st.seeds})
    return f"{seeds[0]}–{seeds[-1]}" if seeds else "none yet"


def at_window_edge(cell: Cell, lam: float) -> bool:
    """``lam`` ends ``cell``'s (narrowed) grid on a side where the term's full grid goes on: the best λ
    may lie beyond what was run (``--grid-window`` wider would tell)."""
    full = GRIDS.get(cell.term or "", ())
    low, high = cell.grid[0], cell.grid[-1]
    return (lam == low and any(v < low for v in full)) or (lam == high and any(v > high for v in full))


def markdown_grid_table(experiment: Experiment, stats: list[CellStats],
                        chosen: dict[tuple[str, str], float]) -> str:
    """Phase 1 of the λ selection, one line per tuned cell and grid λ: the dev metric, the λ chosen,
    and how far each neighbour lies from the choice."""
    metric = next((st.shown_metric for st in stats if st.n), dev_metric(experiment.cells[0].metric))
    unit = " (MSE in 1e-5)" if metric.endswith("mse") else " (%)" if "acc" in metric or "top5" in metric else ""
    better = "highest" if higher_is_better(metric) else "lowest"
    scale = 1e5 if metric.endswith("mse") else 1.0
    lines = [f"### {experiment.name} λ selection, phase 1: {metric} per grid λ{unit}", "",
             f"Source: {experiment.source}. Dev seeds {_seed_span(stats)} (training subsets, inits and "
             f"orders never used by the reported runs), scored on the held-out dev set. Each cell chooses the "
             f"λ with the {better} mean (ties: the smaller λ; a λ with a diverged run is never chosen). "
             f"Δ and p compare a λ with its cell's choice (paired t-test over shared dev seeds, which fix "
             f"the training subset, init and order; uncorrected): a large p means these seeds do not separate "
             f"the two. 'window edge': the choice ends a narrowed grid (--grid-window) that the full grid goes "
             f"on past, so the best λ may lie outside what was run.", "",
             "| method | setup | λ | dev mean (std) n | Δ vs chosen | p vs chosen |", "|---|---|---|---|---|---|"]
    for st in stats:
        cell = st.cell
        is_chosen = chosen.get(cell.key) == st.lam
        tags = [t for t, on in (("paper", st.lam == cell.paper_lambda), ("chosen", is_chosen),
                                ("window edge", is_chosen and at_window_edge(cell, st.lam))) if on]
        lam = f"{st.lam:g}" + (f" ({', '.join(tags)})" if tags else "")
        if chosen.get(cell.key) == st.lam:
            lam = f"**{lam}**"
        text = _runs_text(st, metric)
        delta = "–" if st.delta is None else f"{st.delta * scale:+.2f}"
        p = "–" if st.p_value is None else f"{st.p_value:.2g}"
        lines.append(f"| {cell.row} | {cell.column} | {lam} | {text} | {delta} | {p} |")
    return "\n".join(lines) + "\n"


GRID_CSV_FIELDS = ["experiment", "row", "column", "metric", "term", "lambda", "paper_lambda", "chosen",
                   "at_window_edge", "n",
                   "mean", "std", "diverged", "failed", "missing", "delta_vs_chosen", "p_vs_chosen", "seeds"]


def write_grid_csv(experiment: Experiment, stats: list[CellStats], chosen: dict[tuple[str, str], float],
                   path: str | Path | None = None) -> str:
    """:func:`markdown_grid_table` as CSV, one row per tuned cell and grid λ."""
    rows = ({"experiment": experiment.name, "row": st.cell.row, "column": st.cell.column,
             "metric": st.metric or dev_metric(st.cell.metric), "term": st.cell.term, "lambda": st.lam,
             "paper_lambda": st.cell.paper_lambda, "chosen": chosen.get(st.cell.key) == st.lam,
             "at_window_edge": at_window_edge(st.cell, st.lam),
             "n": st.n, "mean": st.mean if st.n else None, "std": st.std if st.n > 1 else None,
             "diverged": st.diverged, "failed": st.failed, "missing": st.missing,
             "delta_vs_chosen": st.delta, "p_vs_chosen": st.p_value, "seeds": " ".join(map(str, st.seeds))}
            for st in stats)
    return _write_csv(GRID_CSV_FIELDS, rows, path)
