"""One-off: split a results database into the CLI's per-experiment-family databases, ``<dir>/<name>.db``.

The project's committed databases must each stay under 2 MB, and the single ``results/gradreg.db``
was about to outgrow that. Since then an experiment's default database is named by the dataset of its
first cell (``Experiment.database``: ``results/mnist.db``, ``results/sin.db``, ...), so this script moves
existing runs to where the CLI now looks for them: a run goes to its dataset's database, or, for a
dataset no experiment is named by (``sin2``), to the database of the experiment that reads it.
Rows are copied verbatim (keys, configs, metrics, timings, versions), so every report regenerates
byte for byte. Idempotent: rows already present in a target are left alone.

    python scripts/split_results_db.py results/gradreg.db [--out results] [--remove]
"""
from __future__ import annotations

import argparse
import sqlite3
from contextlib import closing
from pathlib import Path

from gradreg.experiments import EXPERIMENTS
from gradreg.store import ResultStore


def database_for(dataset: str) -> str:
    names = {e.database for e in EXPERIMENTS.values()}
    if dataset in names:
        return dataset
    readers = sorted({e.database for e in EXPERIMENTS.values() if any(c.config.dataset == dataset for c in e.cells)})
    return readers[0] if readers else dataset


def split(source: Path, out: Path) -> dict[str, int]:
    with closing(sqlite3.connect(source)) as conn:
        datasets = [d for (d,) in conn.execute(
            "SELECT DISTINCT json_extract(config, '$.dataset') FROM runs ORDER BY 1")]
    copied = {}
    for dataset in datasets:
        target = out / f"{database_for(dataset)}.db"
        ResultStore(target).close()  # creates the schema
        with closing(sqlite3.connect(target)) as conn:
            conn.execute("ATTACH DATABASE ? AS src", (str(source),))
            before = conn.total_changes
            conn.execute("INSERT OR IGNORE INTO runs SELECT * FROM src.runs "
                         "WHERE json_extract(config, '$.dataset') = ?", (dataset,))
            copied[dataset] = conn.total_changes - before
            conn.commit()
            conn.execute("DETACH DATABASE src")
        with ResultStore(target) as store:
            store.compact()
    return copied


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="folder for <dataset>.db (default: the source's)")
    ap.add_argument("--remove", action="store_true", help="delete the source once every row is copied")
    args = ap.parse_args()
    out = args.out or args.source.parent
    copied = split(args.source, out)
    for dataset, n in copied.items():
        print(f"{dataset}: {n} runs copied to {out / (database_for(dataset) + '.db')}")
    if args.remove:
        with closing(sqlite3.connect(args.source)) as conn:
            total = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        kept = 0
        for name in sorted({database_for(d) for d in copied}):
            with closing(sqlite3.connect(out / f"{name}.db")) as conn:
                conn.execute("ATTACH DATABASE ? AS src", (str(args.source),))
                kept += conn.execute("SELECT COUNT(*) FROM src.runs s JOIN runs r USING (key)").fetchone()[0]
        if kept != total:
            raise SystemExit(f"not removing {args.source}: only {kept} of its {total} runs found in the targets")
        args.source.unlink()
        print(f"removed {args.source}")


if __name__ == "__main__":
    main()
