"""The committed reproduction regenerates: every table under ``results/`` is exactly what ``gradreg
report`` makes from the committed results database, so no number in the record was edited by hand or
left behind by a later run. After a sweep adds runs, run `gradreg reproduce <experiment>` and commit both."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradreg.cli import app

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _committed() -> list[tuple[str, object, str]]:
    """(experiment, report, database) for every report the paper's experiments and the experiment files
    under results/specs/ list (gradreg.reports): the commands that wrote results/<table>.md and .csv."""
    from gradreg.experiments import EXPERIMENTS
    from gradreg.spec import load_experiment

    from conftest import model_registry_kept

    named = [(name, exp) for name, exp in EXPERIMENTS.items()]
    with model_registry_kept():  # loaded at collection, before any fixture: their plugins' models leave with them
        files = [(str(p), load_experiment(p)) for p in sorted((RESULTS / "specs").glob("*.toml"))]
    return [(ref, r, r.database(exp.database)) for ref, exp in named + files for r in exp.reports]


COMMITTED = _committed()


@pytest.mark.parametrize("experiment, report, db", COMMITTED, ids=[r.table for _, r, _ in COMMITTED])
def test_committed_table_regenerates_from_its_database(experiment, report, db, tmp_path):
    args = [experiment, *report.arguments(), "--db", str(RESULTS / db)]
    result = CliRunner().invoke(app, ["report", *args, "--markdown", str(tmp_path / "t.md"),
                                      "--csv", str(tmp_path / "t.csv")])
    assert result.exit_code == 0, result.output
    for ext in ("md", "csv"):
        committed = (RESULTS / f"{report.table}.{ext}").read_text()
        assert (tmp_path / f"t.{ext}").read_text() == committed, (
            f"results/{report.table}.{ext} is not what `gradreg reproduce {experiment}` makes from the database")


def test_every_committed_table_is_checked():
    tables = {p.relative_to(RESULTS).with_suffix("").as_posix() for p in RESULTS.rglob("*.md")
              if p.name not in ("REPRODUCTION.md", "README.md")}
    assert tables == {r.table for _, r, _ in COMMITTED}


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


def test_cost_model_matches_the_measured_cpu_seconds_of_runs_within_20_percent():
    """`gradreg experiments`' estimates against the CPU seconds the subnormal comparison's runs stored
    (one thread, flushed: the harness's default), run by run."""
    from gradreg.cost import estimate_run_seconds
    from gradreg.store import ResultStore
    from gradreg.train import RunConfig

    with ResultStore(RESULTS / "flush" / "mnist.db", readonly=True) as store:
        rows = [r for r in store.rows(status="done") if "cpu_seconds" in r["extras"]]
    assert len(rows) >= 3
    for r in rows:
        estimate = estimate_run_seconds(RunConfig.from_dict(r["config"]))
        assert abs(estimate / r["extras"]["cpu_seconds"] - 1) < 0.2, (r["config"]["terms"], estimate, r["extras"])


def test_the_records_subnormal_comparison_is_what_gradreg_compare_makes():
    out = CliRunner().invoke(app, ["compare", str(RESULTS / "flush" / "mnist_noflush.db"),
                                   str(RESULTS / "flush" / "mnist.db"),
                                   str(RESULTS / "specs" / "flush_denormal.toml"), "--seeds", "5"])
    assert out.exit_code == 0, out.output
    rows = [line for line in out.output.splitlines() if line.startswith("| ") and "/ mnist" in line]
    record = (RESULTS / "REPRODUCTION.md").read_text()
    assert len(rows) == 3 and all(row in record for row in rows)
