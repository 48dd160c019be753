"""`gymnast bench gpu` in its --quick mode runs anywhere (here on the CPU) and prints its table."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.bench import gpu as bench_gpu

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def no_device_from_the_environment(monkeypatch):
    monkeypatch.delenv("GYMNAST_DEVICE", raising=False)


def test_quick_bench_prints_every_row_with_rates_and_flops(capsys, tmp_path):
    rc = bench_gpu.main(["--quick", "--device", "cpu", "--json", str(tmp_path / "rows.json")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "gymnast bench gpu: cpu" in out and "MFU" in out
    for name in ("wm/tiny", "wm/large", "grpo/tiny", "grpo/large-reduced", "vla/tiny"):
        assert name in out
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert len(rows) == 2 + 2 + 2 + 2  # wm tiny/large x 2 batches, 2 GRPO rows, vla x 2 batches
    for r in rows:
        assert r["error"] is None
        assert r["rate"] > 0 and r["flops"] > 0 and r["flops_per_s"] > 0
    assert "n/a" in out  # no known peak on a CPU: FLOPs/s only


def test_peak_table_and_mfu_column():
    assert bench_gpu.peak_tflops(torch.device("cpu")) is None
    assert bench_gpu.peak_tflops(torch.device("cpu"), 100.0) == 100.0
    row = bench_gpu.Row("x", 1, rate=1.0, unit="u", seconds=2.0, flops=100e12)
    table = bench_gpu.format_table([row], 100.0, "h")
    assert "50.0%" in table  # 50 TFLOP/s of a 100 TFLOP/s peak
    failed = bench_gpu.Row("y", 8, unit="u", error="OutOfMemoryError: ...")
    assert "ERROR OutOfMemoryError" in bench_gpu.format_table([failed], None, "h")
