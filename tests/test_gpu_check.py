"""benchmarks/gpu_check.py (the prepared GPU run) at its tiny budget on CPU: every part runs and writes
the documented results.json / summary.md; scripts/prepare_gpu_data.py copies what the run needs."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def _cifar_chunks(folder: Path, n: int = 40) -> None:
    """CIFAR-10 in the chunk format of ../shared/data (x: (N, 32, 32, 3) uint8, y: (N,) int64)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        np.savez_compressed(folder / f"{split}_0.npz", x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                            y=np.arange(n, dtype=np.int64) % 10)


def test_gpu_check_tiny_budget_runs_every_part_on_cpu(tmp_path):
    gpu_check = _load(ROOT / "benchmarks" / "gpu_check.py")
    _cifar_chunks(tmp_path / "data" / "cifar10")
    out = tmp_path / "out"
    res = gpu_check.main(["--out", str(out), "--budget", "tiny", "--device", "cpu", "--data-dir", str(tmp_path / "data")])
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["parts"]) == {"regularizers", "grouped", "resnet_steps", "cifar_train"}
    for name, part in saved["parts"].items():
        assert "error" not in part, f"{name}: {part.get('error')}"
    assert saved["parts"]["regularizers"]["LeNet-5, batch 50"]["frobreg (auto)"]["x_plain"] > 0
    rows = saved["parts"]["resnet_steps"]["rows"]
    assert {(r["dtype"], r["layout"]) for r in rows} == {("fp32", "contiguous"), ("bf16", "contiguous")}
    runs = saved["parts"]["cifar_train"]["runs"]
    assert set(runs) == {"baseline", "spectreg 0.003"} and all(r["status"] == "done" for r in runs.values())
    summary = (out / "summary.md").read_text()
    for heading in ("Regularizer steps", "Grouped LeNet-5", "CIFAR ResNet 48/96/192 x3", "Short CIFAR-10 training"):
        assert heading in summary
    assert res["budget"] == "tiny"


def test_gpu_check_records_a_failed_part_and_goes_on(tmp_path):
    gpu_check = _load(ROOT / "benchmarks" / "gpu_check.py")
    out = tmp_path / "out"  # no CIFAR-10 under --data-dir: the training part fails, the others are kept
    gpu_check.main(["--out", str(out), "--budget", "tiny", "--device", "cpu", "--data-dir", str(tmp_path),
                    "--parts", "cifar_train,grouped"])
    saved = json.loads((out / "results.json").read_text())
    assert "error" in saved["parts"]["cifar_train"] and "error" not in saved["parts"]["grouped"]
    assert "## Failed parts" in (out / "summary.md").read_text()


def test_prepare_gpu_data_copies_the_listed_files(tmp_path):
    prep = _load(ROOT / "scripts" / "prepare_gpu_data.py")
    src = tmp_path / "src"
    for name, files in prep.FILES.items():
        (src / name).mkdir(parents=True)
        for f in files:
            (src / name / f).write_bytes(b"x" * 10)
    assert prep.prepare(src, tmp_path / "dest") == 10 * sum(len(f) for f in prep.FILES.values())
    assert (tmp_path / "dest" / "cifar10" / "train_0.npz").read_bytes() == b"x" * 10
    (src / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(SystemExit, match="missing"):
        prep.prepare(src, tmp_path / "dest2")
