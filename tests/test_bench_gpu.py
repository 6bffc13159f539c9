"""The prepared GPU check runs end to end on the CPU at a toy size."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_toy_run_on_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "gpu.txt"
    assert bench.main(["--toy", "--device", "cpu", "--out", str(out)]) == 0
    text = out.read_text()
    for needle in ("forward pass", "head influence end to end, fp32 features",
                   "head influence end to end, bf16 features",
                   "one fine-tuning epoch", "x the bf16 forward throughput"):
        assert needle in text, needle
