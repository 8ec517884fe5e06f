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
              if p.name not in ("REPRODUCTION.md", "README.md")}
    assert tables == {stem for *_, stem in COMMITTED}


# --- the record's summary and the results index: what `gradreg index` makes from the committed tables ---


def test_results_index_and_record_summary_are_what_gradreg_index_makes():
    from gradreg.results_index import BEGIN, END, render_readme, render_summary

    assert (RESULTS / "README.md").read_text() == render_readme(RESULTS), "run `gradreg index`"
    record = (RESULTS / "REPRODUCTION.md").read_text()
    assert BEGIN + record.split(BEGIN, 1)[1].split(END, 1)[0] + END == render_summary(RESULTS), "run `gradreg index`"


def test_every_summary_link_names_a_section_of_the_record_and_every_index_file_exists():
    import re

    from gradreg.results_index import CLAIMS, ENTRIES

    record = (RESULTS / "REPRODUCTION.md").read_text()
    # GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", record, flags=re.M)}
    assert {c.section for c in CLAIMS} | {e.section for e in ENTRIES} <= anchors
    for e in ENTRIES:
        for stem in e.tables:
            assert (RESULTS / f"{stem}.md").exists() and (RESULTS / f"{stem}.csv").exists(), stem
        for fig in e.figures:
            assert (RESULTS / "figures" / f"{fig}.png").exists(), fig


def test_index_command_refuses_a_record_without_a_summary_block(tmp_path):
    (tmp_path / "REPRODUCTION.md").write_text("# a record without the markers\n")
    (tmp_path / "figures").mkdir()
    result = CliRunner().invoke(app, ["index", "--results", str(tmp_path)])
    assert result.exit_code != 0 and "no summary block" in result.output


# --- numbers the record states that no report table carries, recomputed from the databases ---


def _table6():
    from gradreg.experiments import get_experiment
    from gradreg.report import collect
    from gradreg.store import ResultStore

    with ResultStore(RESULTS / "mnist.db") as store:
        stats = {st.cell.row: st for st in collect(get_experiment("table6"), store)}
        seconds = {row: [r["seconds"] for r in store.rows(keys=[st.cell.run(st.lam, s).key() for s in st.seeds])]
                   for row, st in stats.items()}
    return stats, seconds


def test_frobreg_minus_spectreg_paired_interval_and_cost_as_the_record_states():
    import math
    import statistics

    from scipy import stats as sps

    stats, seconds = _table6()
    frob, spect = stats["FrobReg"].by_seed, stats["SpectReg"].by_seed
    diffs = [frob[s] - spect[s] for s in sorted(frob)]
    assert len(diffs) == 10
    half = sps.t.ppf(0.975, 9) * statistics.stdev(diffs) / math.sqrt(10)
    mean = statistics.fmean(diffs)
    assert (round(mean, 2), round(mean - half, 2), round(mean + half, 2)) == (0.04, -0.02, 0.10)
    ratio = statistics.fmean(seconds["FrobReg"]) / statistics.fmean(seconds["SpectReg"])
    assert round(ratio, 1) == 4.4  # "4.4 times SpectReg's wall time"


def test_figure4_dead_runs_and_figure6_dev_choice_as_the_record_states():
    from gradreg.experiments import get_experiment
    from gradreg.plots_paper import figure4_panels, sin_dev_choice
    from gradreg.store import ResultStore

    with ResultStore(RESULTS / "mnist.db") as store:
        panels = {p.row: p for p in figure4_panels(get_experiment("figure4"), store, seeds=3)}
    assert panels["wd = 0.01"].dead == {lam: [1] for lam in (0.0, 50.0, 100.0, 200.0, 500.0, 1000.0)}
    assert not any(p.dead for row, p in panels.items() if row != "wd = 0.01")
    assert not panels["wd = 0.0001"].live and not panels["wd = 0.001"].live  # "not run" panels
    with ResultStore(RESULTS / "sin.db") as store:
        lam, dev = sin_dev_choice(store)
    assert lam == 0.001 and round(dev[0.001] * 1e3, 1) == 12.2 and round(dev[0] * 1e3, 1) == 14.0
