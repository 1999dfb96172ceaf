"""trainer.benchmark runs every phase and writes its table and JSON.

A smoke test with a tiny model and a handful of steps: it proves the command
works on this machine, never asserts a speed."""

import json
import re

import pytest

pytestmark = pytest.mark.multiprocess


def test_benchmark_runs_every_phase(run_cli, tmp_path):
  out = tmp_path / "bench.json"
  result = run_cli(
    "trainer.benchmark",
    "--config=tiny",
    "--steps=2",
    "--warmup_steps=1",
    "--input_batches=2",
    "--records=64",
    f"--json={out}",
    timeout=900,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  assert (
    report["peak"]["bfloat16_gflops"] > 0
    and report["peak"]["float32_gflops"] > 0
  )
  for phase in ("step", "e2e", "service"):
    assert report[phase]["images_per_sec"] > 0
    assert report[phase]["fraction_of_peak"] > 0
    assert report[phase]["train_gflop_per_image"] > 0
  assert report["e2e"]["peak_host_memory_mb"] > 100
  assert report["input"]["images_per_sec_per_core"] > 0
  assert report["seed"]["images_per_sec"] > 0 and report["speedup_vs_seed"] > 0
  assert report["scaling"]["efficiency"] > 0
  for row in (
    "matmul peak",
    "step",
    "e2e",
    "input",
    "seed setup",
    "2 workers",
    "tf.data service",
  ):
    assert row in result.stdout


def test_of_peak_is_a_dash_without_the_peak_phase(run_cli):
  result = run_cli(
    "trainer.benchmark",
    "--config=tiny",
    "--steps=2",
    "--warmup_steps=1",
    "--records=64",
    "--skip=peak,input,e2e,seed,scaling,service",
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  rows = {
    line.split()[0]: re.split(r"\s{2,}", line.strip())
    for line in result.stdout.splitlines()
    if line.strip()
  }
  assert rows["phase"][:4] == ["phase", "images/s", "GFLOP/s", "of peak"]
  assert rows["step"][3] == "-", rows["step"]
  assert "nan" not in result.stdout
