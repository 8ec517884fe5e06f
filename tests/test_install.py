"""The lean install: the library imports and trains with torch and numpy only; the gradreg command
without the harness's packages says how to install them."""
from __future__ import annotations

import subprocess
import sys

# A meta-path finder that makes the harness's packages unimportable, as in `pip install gradreg`.
_BLOCK = """
import sys
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"scipy", "sklearn", "matplotlib", "tqdm", "typer", "ray"}:
            raise ImportError(f"No module named {name!r} (blocked: lean install)")
        return None
sys.meta_path.insert(0, _Absent())
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCK + code], capture_output=True, text=True)


def test_the_library_needs_only_torch_and_numpy():
    out = _run("""
import torch, gradreg
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
objective = gradreg.Objective("cross_entropy", [(0.1, gradreg.SpectReg()), (0.1, gradreg.DataGrad())])
out = objective(model, torch.randn(5, 4), torch.randint(0, 3, (5,)))
out.loss.backward()
assert model[0].weight.grad is not None
print(sorted(out.parts()))
assert not any(m in sys.modules for m in ("scipy", "sklearn", "matplotlib", "tqdm", "typer"))
""")
    assert out.returncode == 0, out.stderr
    assert "spectreg" in out.stdout and "datagrad" in out.stdout


def test_the_command_without_the_harness_says_how_to_install_it():
    out = _run("import sys; sys.argv = ['gradreg', 'demo']\nfrom gradreg.entry import main\nmain()")
    assert out.returncode == 2
    assert "pip install 'gradreg[experiments]'" in out.stderr and "Traceback" not in out.stderr
