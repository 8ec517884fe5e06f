"""An experiment's committed reports: which tables ``gradreg report`` writes from which database.

Each :class:`Report` is one table under ``results/`` (``<table>.md`` and ``<table>.csv``): the phase of
the λ selection it shows, its seeds, its comparisons, and the database it reads. An experiment lists
its reports (``Experiment.reports``; ``[[reports]]`` in an experiment file), so ``gradreg reproduce
NAME`` regenerates every committed table of NAME and the committed-results test checks each of them
against its database, with no copy of the commands anywhere else.

In an experiment file::

    [[reports]]
    table = "figure2_500_selected"     # results/figure2_500_selected.md and .csv
    db = "figure2/mnist.db"            # under results/; default: the experiment's database
    phase = "selected"                 # the λ selection's phase: paper (default), dev, grid or selected
    seeds = 5
    dev_seeds = 3
    paired = true
    against = "SpectReg"               # also: grid_window, rows = [...], set = {lr = 0.001}
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Report", "report_from_dict", "REPORT_KEYS"]

REPORT_KEYS = ("table", "db", "phase", "seeds", "dev_seeds", "grid_window", "rows", "against", "paired", "set")
_TABLE = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


@dataclass(frozen=True)
class Report:
    """One committed table: the arguments of ``gradreg report`` that make it."""

    table: str                                   # results/<table>.md and .csv (may hold a subfolder)
    db: str | None = None                        # under results/; None: the experiment's database
    phase: str = "paper"                         # paper, dev, grid or selected (gradreg.selection)
    seeds: int | None = None
    dev_seeds: int | None = None
    grid_window: int | None = None
    rows: tuple[str, ...] = ()
    against: str | None = None
    paired: bool = False
    set: tuple[tuple[str, Any], ...] = ()        # recipe overrides, as --set key=value

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(self.rows))
        object.__setattr__(self, "set", tuple(sorted(dict(self.set).items())))
        if not _TABLE.fullmatch(self.table) or ".." in self.table.split("/"):
            raise ValueError(f"table must be a file stem under results/ (letters, digits, _ . - and /), "
                             f"got {self.table!r}")
        if self.phase not in ("paper", "dev", "grid", "selected"):
            raise ValueError(f"table {self.table}: phase must be paper, dev, grid or selected, got {self.phase!r}")
        for key in ("seeds", "dev_seeds", "grid_window"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"table {self.table}: {key} must be a non-negative integer, got {value!r}")
        if self.phase == "grid" and (self.against or self.paired):
            raise ValueError(f"table {self.table}: a grid report compares each λ with the chosen one; "
                             "against/paired are for the paper and selected phases")

    def database(self, experiment_database: str) -> str:
        """The database's path under results/."""
        return self.db or f"{experiment_database}.db"

    def arguments(self) -> list[str]:
        """The options of ``gradreg report`` (after the experiment) that make this table."""
        args = [] if self.phase == "paper" else ["--phase", self.phase]
        for key in ("seeds", "dev_seeds", "grid_window"):
            value = getattr(self, key)
            if value is not None:
                args += [f"--{key.replace('_', '-')}", str(value)]
        for row in self.rows:
            args += ["--row", row]
        if self.against:
            args += ["--against", self.against]
        if self.paired:
            args.append("--paired")
        for key, value in self.set:
            args += ["--set", f"{key}={value}"]
        return args


def report_from_dict(entry: dict[str, Any], where: str) -> Report:
    """A :class:`Report` from an experiment file's ``[[reports]]`` entry; errors name ``where``."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a table ([[reports]]), got {entry!r}")
    entry = dict(entry)
    if "lambdas" in entry:  # the key's old name, for files written with it
        if "phase" in entry:
            raise ValueError(f"{where}: give phase alone (lambdas is its old name)")
        entry["phase"] = entry.pop("lambdas")
    unknown = sorted(set(entry) - set(REPORT_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(REPORT_KEYS)}")
    if "table" not in entry:
        raise ValueError(f"{where}: needs a table (the file stem under results/)")
    kinds = {"table": str, "db": str, "phase": str, "against": str, "paired": bool, "rows": list, "set": dict}
    for key, kind in kinds.items():
        if key in entry and not isinstance(entry[key], kind):
            raise ValueError(f"{where}: {key} must be a {kind.__name__}, got {entry[key]!r}")
    d = dict(entry)
    d["rows"] = tuple(d.get("rows", ()))
    d["set"] = tuple(d.get("set", {}).items())
    try:
        return Report(**d)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
