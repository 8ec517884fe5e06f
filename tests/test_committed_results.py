"""The committed reproduction regenerates: every table under ``results/`` is exactly what ``gradreg
report`` makes from the committed results database, so no number in the record was edited by hand or
left behind by a later run. After a sweep adds runs, rerun the command of its row here and commit both."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradreg.cli import app

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _selection(spec: str, selected: str, *, db: str = "figure2/mnist.db", dev_seeds: int = 3, seeds: int = 5,
               against: str | None = None) -> list[tuple[list[str], str, str]]:
    """A λ selection of an experiment file (results/specs/<spec>.toml): its grid phase on `dev_seeds` dev
    seeds (table <spec>), its selected phase on `seeds` test seeds against the baseline (table <selected>)
    and, if given, against a method."""
    path = str(RESULTS / "specs" / f"{spec}.toml")
    chosen = [path, "--lambdas", "selected", "--seeds", str(seeds), "--dev-seeds", str(dev_seeds), "--paired"]
    tables = [([path, "--lambdas", "grid", "--seeds", str(dev_seeds)], db, spec), (chosen, db, selected)]
    if against is not None:
        tables.append(([*chosen, "--against", against], db, f"{selected}_vs-{against}"))
    return tables


# (report arguments, database, table stem): the commands that wrote results/<stem>.md and .csv.
COMMITTED = [
    (["table1"], "mnist.db", "table1"),
    (["table2"], "mnist.db", "table2"),
    (["table2_cp"], "mnist.db", "table2_cp"),
    (["table4"], "mnist.db", "table4"),
    (["table4", "--lambdas", "grid", "--grid-window", "1", "--seeds", "5"], "mnist.db", "table4_dev"),
    (["table4", "--lambdas", "selected", "--grid-window", "1", "--dev-seeds", "5"], "mnist.db", "table4_selected"),
    (["table4", "--lambdas", "grid", "--grid-window", "2", "--seeds", "5", "--row", "SpectReg"], "mnist.db",
     "table4_SpectReg_dev"),
    (["table4", "--lambdas", "selected", "--grid-window", "2", "--dev-seeds", "5", "--row", "SpectReg"], "mnist.db",
     "table4_SpectReg_selected"),
    (["table6"], "mnist.db", "table6"),
    ([str(RESULTS / "specs" / "figure4_strip.toml")], "mnist.db", "figure4_strip"),
    ([str(RESULTS / "specs" / "figure4_wd_probe.toml")], "mnist.db", "figure4_wd_probe"),
    ([str(RESULTS / "specs" / "table4_datagrad_dev.toml"), "--lambdas", "grid", "--seeds", "5"], "mnist.db",
     "table4_datagrad_dev"),
    *_selection("table6_jacreg_dev", "table6_jacreg_selected", db="mnist.db", dev_seeds=2),
    ([str(RESULTS / "specs" / "figure2_devpicked.toml"), "--seeds", "3", "--paired"], "figure2/mnist.db",
     "figure2_devpicked"),
    ([str(RESULTS / "specs" / "figure2_devpicked.toml"), "--seeds", "3", "--paired", "--against", "DataGrad"],
     "figure2/mnist.db", "figure2_devpicked_vs-DataGrad"),
    *_selection("figure2_20000_datagrad_dev", "figure2_20000_datagrad_selected", seeds=10),
    *_selection("figure2_20000_spectreg_dev", "figure2_20000_spectreg_selected", seeds=10),
    *(table for size in ("500", "1000", "5000", "10000")
      for table in _selection(f"figure2_{size}_dev", f"figure2_{size}_selected", against="SpectReg")),
    ([str(RESULTS / "specs" / "figure2_tuned.toml"), "--seeds", "5", "--paired"], "figure2/mnist.db", "figure2_tuned"),
    ([str(RESULTS / "specs" / "figure2_tuned.toml"), "--seeds", "5", "--paired", "--against", "DataGrad"],
     "figure2/mnist.db", "figure2_tuned_vs-DataGrad"),
    (["table7"], "sin.db", "table7"),
    (["sin2"], "sin.db", "sin2"),
    (["sin_lownoise"], "sin_lownoise.db", "sin_lownoise"),
    (["table2", "--set", "lr=0.001"], "lr0.001/mnist.db", "lr0.001/table2"),
    (["table4", "--set", "lr=0.001"], "lr0.001/mnist.db", "lr0.001/table4"),
]


@pytest.mark.parametrize("args, db, stem", COMMITTED, ids=[stem for *_, stem in COMMITTED])
def test_committed_table_regenerates_from_its_database(args, db, stem, tmp_path):
    args = [*args, "--db", str(RESULTS / db)]
    result = CliRunner().invoke(app, ["report", *args, "--markdown", str(tmp_path / "t.md"),
                                      "--csv", str(tmp_path / "t.csv")])
    assert result.exit_code == 0, result.output
    for ext in ("md", "csv"):
        committed = (RESULTS / f"{stem}.{ext}").read_text()
        assert (tmp_path / f"t.{ext}").read_text() == committed, (
            f"results/{stem}.{ext} is not what `gradreg report {' '.join(args)}` makes from the database")


def test_every_committed_table_is_checked():
    tables = {p.relative_to(RESULTS).with_suffix("").as_posix() for p in RESULTS.rglob("*.md")
              if p.name != "REPRODUCTION.md"}
    assert tables == {stem for *_, stem in COMMITTED}
