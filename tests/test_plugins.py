"""The user's own components in sweeps: imported by module name or file, here and in every worker."""
from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradreg.cli import app
from gradreg.models import MODELS
from gradreg.plugins import import_plugins, resolve_imports
from gradreg.spec import load_experiment
from gradreg.store import ResultStore
from gradreg.sweep import run_sweep
from gradreg.train import RunConfig

PLUGIN = """
import math
from torch import nn
import gradreg

@gradreg.register_model({name!r})
def tiny(*, input_shape, num_outputs, batchnorm, dropout):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 8), nn.Tanh(), nn.Linear(8, num_outputs))
"""


@pytest.fixture
def plugin(tmp_path):
    """A .py file registering a model under a fresh name; the registry and sys.modules cleaned after."""
    name = f"tiny_{uuid.uuid4().hex[:8]}"
    path = tmp_path / "plugins" / "my_models.py"
    path.parent.mkdir()
    path.write_text(PLUGIN.format(name=name))
    yield name, path
    MODELS.pop(name, None)
    _forget_plugin_modules()


def _forget_plugin_modules() -> None:
    """The tests' plugin modules out of sys.modules (and nothing else the test happened to import)."""
    for module in [m for m in sys.modules if m.startswith(("gradreg_plugin_", "my_models", "sibling_"))]:
        del sys.modules[module]


def sin_config(model: str, seed: int = 0) -> RunConfig:
    return RunConfig(dataset="sin", model=model, seed=seed, overrides=(("steps", 20), ("eval_points", 1)))


def test_a_file_is_imported_once_and_registers_its_model(plugin, tmp_path, monkeypatch):
    name, path = plugin
    assert name not in MODELS
    monkeypatch.chdir(path.parent)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the file's folder goes on it
    import_plugins("my_models.py")  # one entry, relative to the current directory
    assert name in MODELS and str(path.parent) in sys.path
    import_plugins([path, "my_models.py"])  # the same file again, as a Path: skipped (registering twice raises)
    # Imported under its own name, so the script's own `import my_models` finds it and runs nothing again.
    assert sys.modules["my_models"].__file__ == str(path.resolve())
    import my_models  # noqa: F401


def test_a_file_the_script_imported_itself_is_not_run_again(plugin, monkeypatch):
    name, path = plugin
    monkeypatch.syspath_prepend(str(path.parent))
    import my_models  # noqa: F401  (the user's script, importing its module by name)
    assert name in MODELS
    import_plugins([str(path)])  # would raise "already registered" if it ran the file a second time


def test_a_file_shadowed_by_another_module_of_its_name_gets_a_name_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "json.py").write_text("SHADOW = True\n")  # the stdlib's json wins the name
    import_plugins([str(tmp_path / "json.py")])
    mine = [m for n, m in sys.modules.items() if n.startswith("gradreg_plugin_json_")]
    assert len(mine) == 1 and mine[0].SHADOW and not hasattr(sys.modules["json"], "SHADOW")
    _forget_plugin_modules()


def test_a_file_imports_the_modules_beside_it(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "sibling_layers.py").write_text("WIDTH = 7\n")
    (tmp_path / "sibling_models.py").write_text("from sibling_layers import WIDTH\n")
    try:
        import_plugins([str(tmp_path / "sibling_models.py")])
        assert sys.modules["sibling_models"].WIDTH == 7
    finally:
        _forget_plugin_modules()


def test_a_module_name_is_imported_from_sys_path(plugin, monkeypatch):
    name, path = plugin
    monkeypatch.syspath_prepend(str(path.parent))
    import_plugins(["my_models"])
    assert name in MODELS and "my_models" in sys.modules


def test_missing_imports_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"imports: no file at .*nowhere\.py"):
        import_plugins([str(tmp_path / "nowhere.py")])
    with pytest.raises(ValueError, match=r"no module named 'no_such_module_xyz' on sys.path; give a \.py"):
        import_plugins(["no_such_module_xyz"])
    with pytest.raises(ValueError, match="each entry must be a module name or a .py file"):
        import_plugins([""])
    with pytest.raises(ValueError, match="neither a module name .* nor a .py file"):
        import_plugins(["./my_models"])
    # A module that exists but fails on a missing dependency (whose name it starts with): the
    # dependency is named, and the original error chained.
    (tmp_path / "needs_dep.py").write_text("import needs\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="importing needs_dep failed: ModuleNotFoundError: No module named 'needs'"
                       ) as info:
        import_plugins(["needs_dep"])
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    # A file whose code raises names the file, and is not left in sys.modules: a second attempt runs it again.
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("x = int('not a number')\n")
    for _ in range(2):
        with pytest.raises(ImportError, match=r"importing .*bad_plugin\.py failed: ValueError: invalid literal"):
            import_plugins([str(bad)])
    spec = tmp_path / "bad.toml"
    spec.write_text('imports = ["bad_plugin.py"]\n[[cells]]\nrow = "a"\n')
    with pytest.raises(ImportError, match="bad_plugin.py failed"):  # not passed off as the file's own error
        load_experiment(spec)


def test_resolve_imports_makes_files_absolute_from_base(tmp_path):
    out = resolve_imports(["a.py", "pkg.mod", str(tmp_path / "b.py")], base=tmp_path / "specs")
    assert out == (str((tmp_path / "specs" / "a.py").resolve()), "pkg.mod", str((tmp_path / "b.py").resolve()))


def test_experiment_file_imports_relative_to_itself(plugin, tmp_path, monkeypatch):
    name, path = plugin
    spec = path.parent / "mine.toml"
    body = textwrap.dedent(f"""
        [run]
        dataset = "sin"
        model = "{name}"
        [[cells]]
        row = "plain"
        baseline = true
    """)
    monkeypatch.chdir(tmp_path)  # not the file's directory
    spec.write_text(body)
    with pytest.raises(ValueError, match=f"unknown model '{name}'; valid: .*lenet5"):
        load_experiment(spec)  # without imports the model is unknown, and the error lists the valid ones
    spec.write_text('imports = ["my_models.py"]\n' + body)
    exp = load_experiment(spec)
    assert exp.imports == (str(path.resolve()),) and exp.cells[0].config.model == name
    spec.write_text('imports = "my_models.py"\n' + body)
    with pytest.raises(ValueError, match="imports must be a list of module names or .py files"):
        load_experiment(spec)


def test_spawned_workers_import_the_plugin(plugin, tmp_path):
    name, path = plugin
    import_plugins([str(path)])  # registered in this process only, as a script's own registration is
    configs = [sin_config(name, s) for s in range(2)]
    # Without imports the spawned workers do not know the model: the runs fail, naming it.
    failed = run_sweep(configs, tmp_path / "without.db", workers=2, progress=False)
    assert failed.failed == 2
    with ResultStore(tmp_path / "without.db") as store:
        assert all(f"unknown model {name!r}" in r["error"] for r in store.rows())
    done = run_sweep(configs, tmp_path / "with.db", workers=2, progress=False, imports=[str(path)])
    assert (done.done, done.failed) == (2, 0)
    with ResultStore(tmp_path / "with.db") as store:
        assert all(r["metrics"]["test_mse"] > 0 for r in store.rows())


def test_a_worker_that_cannot_import_stops_the_sweep_with_its_error(tmp_path):
    # Imports here, fails in every spawned worker (a stand-in for a module only this process can see).
    worker_only = tmp_path / "my_models_workers_fail.py"
    worker_only.write_text("import multiprocessing\nif multiprocessing.parent_process() is not None:\n"
                           "    raise RuntimeError('not in a worker')\n")
    configs = [sin_config("mlp", s) for s in range(2)]
    try:
        with pytest.raises(ValueError, match=r"a sweep worker \(a fresh process\) could not import them"
                                             r"(.|\n)*RuntimeError: not in a worker"):
            run_sweep(configs, tmp_path / "runs.db", workers=2, progress=False, imports=[worker_only])
    finally:
        _forget_plugin_modules()
    with ResultStore(tmp_path / "runs.db") as store:  # nothing claimed is left behind, nothing trained
        assert store.counts().get("running", 0) == 0 and not store.rows(status="done")


def test_run_sweep_fails_on_a_missing_import_before_training(tmp_path):
    with pytest.raises(ValueError, match="imports: no file at"):
        run_sweep([sin_config("mlp")], tmp_path / "runs.db", progress=False, imports=[str(tmp_path / "x.py")])
    assert not (tmp_path / "runs.db").exists()


def test_train_imports_a_plugin(plugin):
    name, path = plugin
    result = CliRunner().invoke(app, ["train", "--dataset", "sin", "--model", name, "--import", str(path),
                                      "--smoke", "--no-progress"])
    assert result.exit_code == 0 and result.output.startswith("done"), result.output
    missing = CliRunner().invoke(app, ["train", "--import", str(path.parent / "nope.py"), "--smoke"])
    assert missing.exit_code != 0 and "imports: no file at" in missing.output


def test_the_example_model_sweeps_from_the_cli(tmp_path):
    example = Path(__file__).resolve().parents[1] / "examples" / "my_model_sweep.toml"
    try:
        db = tmp_path / "mine.db"
        result = CliRunner().invoke(app, ["sweep", str(example), "--smoke", "--workers", "2", "--db", str(db),
                                          "--no-progress"])
        assert result.exit_code == 0, result.output
        assert "2 done, 0 diverged, 0 failed" in result.output
        with ResultStore(db) as store:
            assert {r["config"]["model"] for r in store.rows(status="done")} == {"wide_mlp"}
    finally:
        MODELS.pop("wide_mlp", None)
        _forget_plugin_modules()
