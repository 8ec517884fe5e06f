"""One-off migration of results/gradreg.db for the MNIST recipe's learning-rate change (0.001 -> 0.003).

A run's key hashes its fully resolved recipe. MNIST runs recorded while the recipe's Adam rate was
0.001 carry no ``lr`` override, so under the new default their configs would read as lr 0.003 runs
that were never trained. This script writes the rate they really used into their configs
(``overrides.lr = 0.001``) and re-keys them, so that they stay reportable as what they are:

    gradreg report table4 --set lr=0.001

(After the migration these runs were moved to ``results/lr0.001/mnist.db``, keeping each committed
database under 2 MB: pass ``--db results/lr0.001/mnist.db`` to report them. The other runs of
``results/gradreg.db`` now lie in per-family databases: see ``scripts/split_results_db.py``.)

Only rows whose stored key equals the key their config has under the *old* recipe are touched, which
is true of exactly the rows trained with lr 0.001 by default; rows trained after the change (and rows
already migrated) do not match, so running it twice changes nothing.

    python scripts/migrate_mnist_lr.py [--db results/gradreg.db] [--dry-run]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sqlite3
from unittest import mock

from gradreg import recipes
from gradreg.store import to_json
from gradreg.train import RunConfig

OLD_LR = 1e-3


def old_key(config: dict) -> str | None:
    """The key ``config`` had when the MNIST recipe's rate was ``OLD_LR`` (None if it is no MNIST-recipe run)."""
    old = dict(recipes.RECIPES) | {"mnist": dataclasses.replace(recipes.RECIPES["mnist"], lr=OLD_LR)}
    with mock.patch.dict(recipes.RECIPES, old):
        cfg = RunConfig.from_dict(config)
        if cfg.base_recipe() is not old["mnist"] or "lr" in dict(cfg.overrides):
            return None
        return cfg.key()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", default="results/gradreg.db")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    con = sqlite3.connect(args.db, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    moved = 0
    for key, text in con.execute("SELECT key, config FROM runs").fetchall():
        config = json.loads(text)
        if old_key(config) != key:
            continue
        new = RunConfig.from_dict(config | {"overrides": dict(config.get("overrides", {})) | {"lr": OLD_LR}})
        con.execute("UPDATE runs SET key = ?, config = ? WHERE key = ?",
                    (new.key(), to_json(new.to_dict()), key))
        moved += 1
    con.execute("ROLLBACK" if args.dry_run else "COMMIT")
    print(f"{'would re-key' if args.dry_run else 're-keyed'} {moved} MNIST run(s) to lr={OLD_LR}")


if __name__ == "__main__":
    main()
