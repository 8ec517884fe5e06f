"""The same runs in two databases, paired run by run: does an execution setting move results?

Run keys hold what determines a run (its config), not how it was executed (threads, memory layout,
subnormal flushing, machine, torch build). Training the same planned runs twice, once per setting,
into two databases and pairing them by key measures what the setting does to the numbers, seed by
seed; the per-cell wall times give its speed. ``gradreg compare A.db B.db EXPERIMENT`` prints it.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable

from .experiments import PlannedRun
from .selection import paired_p
from .store import ResultStore

__all__ = ["PairedCell", "compare_stores", "markdown_comparison"]


@dataclass(frozen=True)
class PairedCell:
    """One cell's runs finished in both databases: metric values by seed, and seconds per run."""

    label: str
    metric: str
    a: dict[int, float]
    b: dict[int, float]
    seconds_a: list[float]
    seconds_b: list[float]
    cpu_a: tuple[float, ...] = ()           # extras.cpu_seconds where every run stored it
    cpu_b: tuple[float, ...] = ()

    @property
    def seeds(self) -> list[int]:
        return sorted(self.a.keys() & self.b.keys())

    @property
    def diffs(self) -> list[float]:
        return [self.b[s] - self.a[s] for s in self.seeds]

    def interval(self, level: float = 0.95) -> tuple[float, float] | None:
        """Paired t interval of mean(B − A); None below 2 pairs."""
        d = self.diffs
        if len(d) < 2:
            return None
        from scipy import stats
        half = stats.t.ppf(0.5 + level / 2, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
        return statistics.fmean(d) - half, statistics.fmean(d) + half


def compare_stores(plan: Iterable[PlannedRun], a: ResultStore, b: ResultStore,
                   metric: str = "test_acc") -> list[PairedCell]:
    """Pair the planned runs finished (status done) in both stores, cell by cell, in plan order."""
    cells: dict[str, list[PlannedRun]] = {}
    for p in plan:
        label = " / ".join(part for part in p.cell.key if part) + (f", λ = {p.lam:g}" if p.lam else "")
        cells.setdefault(label, []).append(p)
    out = []
    for label, runs in cells.items():
        keys = [p.config.key() for p in runs]
        rows_a = {r["key"]: r for r in a.rows(keys, status="done")}
        rows_b = {r["key"]: r for r in b.rows(keys, status="done")}
        # (seed, row in A, row in B) of each run finished in both
        pairs = [(p.config.seed, rows_a[k], rows_b[k]) for p, k in zip(runs, keys) if k in rows_a and k in rows_b]
        if any(metric not in ra["metrics"] for _, ra, _ in pairs):
            raise ValueError(f"metric {metric!r} is not in the runs of {label}; try one of: "
                             f"{', '.join(sorted(pairs[0][1]['metrics']))}")
        out.append(PairedCell(
            label=label, metric=metric,
            a={seed: ra["metrics"][metric] for seed, ra, _ in pairs},
            b={seed: rb["metrics"][metric] for seed, _, rb in pairs},
            seconds_a=[ra["seconds"] for _, ra, _ in pairs], seconds_b=[rb["seconds"] for _, _, rb in pairs],
            cpu_a=_cpu([ra for _, ra, _ in pairs]), cpu_b=_cpu([rb for _, _, rb in pairs])))
    return out


def _cpu(rows: list[dict]) -> tuple[float, ...]:
    """The runs' CPU seconds, or () unless every run stored them."""
    cpu = tuple((r.get("extras") or {}).get("cpu_seconds") for r in rows)
    return () if None in cpu else cpu


def markdown_comparison(cells: list[PairedCell], name_a: str, name_b: str) -> str:
    """A Markdown table: per cell, both means, the paired difference with its 95% interval, the largest
    difference, how many pairs agree exactly, the paired t-test's p, and median seconds per run (CPU
    seconds where the runs stored them, wall seconds otherwise)."""
    metric = cells[0].metric if cells else "metric"
    lines = [f"A = {name_a}, B = {name_b}; {metric}, paired by run key (same config and seed)", "",
             "| cell | pairs | A | B | B − A (95% CI) | max abs(B − A) | identical | p (paired t) | s/run A | s/run B | A / B time |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        if not c.seeds:
            lines.append(f"| {c.label} | 0 | | | | | | | | | |")
            continue
        d, ci, p = c.diffs, c.interval(), paired_p(c.a, c.b)
        ci_text = f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""
        cpu = bool(c.cpu_a and c.cpu_b)
        sa, sb = (statistics.median(c.cpu_a), statistics.median(c.cpu_b)) if cpu else \
            (statistics.median(c.seconds_a), statistics.median(c.seconds_b))
        lines.append(
            f"| {c.label} | {len(d)} | {statistics.fmean(c.a[s] for s in c.seeds):.3f} | "
            f"{statistics.fmean(c.b[s] for s in c.seeds):.3f} | {statistics.fmean(d):+.3f}{ci_text} | "
            f"{max(abs(x) for x in d):.3f} | {sum(x == 0 for x in d)}/{len(d)} | "
            f"{'' if p is None else f'{p:.2g}'} | {sa:.0f}{' CPU' if cpu else ''} | {sb:.0f}{' CPU' if cpu else ''} | "
            f"{sa / sb:.2f}x |")
    return "\n".join(lines)
