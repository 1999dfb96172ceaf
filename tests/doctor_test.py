"""`python -m trainer.doctor` on this CPU: table, JSON, --expect."""

import json
import os
import shutil
import time

import pytest

from trainer.config import PRECISIONS

pytestmark = pytest.mark.multiprocess


def _has_nvidia_driver():
  return (
    os.path.exists("/proc/driver/nvidia/version")
    or shutil.which("nvidia-smi") is not None
  )


def _cpu_flags():
  with open("/proc/cpuinfo") as f:
    line = next(l for l in f if l.startswith("flags"))
  return set(line.partition(":")[2].split())


@pytest.fixture(scope="module")
def versions():
  import keras
  import tensorflow as tf

  return tf.__version__, keras.__version__, tf.sysconfig.get_build_info()


@pytest.fixture(scope="module")
def report(cache_dir):
  """`python -m trainer.doctor --json`, with its benchmark: run once (the
  seed-model benchmark is most of its time) for the JSON and table tests."""
  import subprocess
  import sys

  from conftest import REPO
  from conftest import cli_env

  result = subprocess.run(
    [sys.executable, "-m", "trainer.doctor", "--json"],
    cwd=REPO,
    env=cli_env(cache_dir),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout)  # stdout is the JSON and nothing else


def _table_of(report, cache_dir):
  """doctor.format_table(report), in its own process (doctor's flags would
  clash with other modules' in this one)."""
  import subprocess

  from conftest import REPO
  from conftest import cli_env
  from conftest import probe_command

  result = subprocess.run(
    probe_command("doctor:table_of_stdin"),
    input=json.dumps(report),
    cwd=REPO,
    env=cli_env(cache_dir),
    capture_output=True,
    text=True,
    timeout=60,
    check=True,
  )
  return result.stdout


def test_table_says_what_runs_here(run_cli, versions, report, cache_dir):
  # The command prints the table; the benchmark's row is checked in the same
  # table drawn from the full report (the benchmark runs once, in `report`).
  result = run_cli("trainer.doctor", "--nobenchmark", timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  tf_version, keras_version, build = versions
  for row in (
    "TensorFlow",
    "Keras",
    "built for",
    "NVIDIA driver",
    "GPUs",
    "TPUs",
    "precision auto",
    "all-reduce",
    "CPU flags",
    "oneDNN ops",
  ):
    assert row in out, (row, out)
  assert tf_version in out and keras_version in out
  if build.get("is_cuda_build"):
    assert f"CUDA {build['cuda_version']}" in out
    # Each library TF would load is listed with what happened to it.
    assert "libcudart.so.12" in out and "libcuda.so.1" in out
  if not _has_nvidia_driver():
    assert "none found" in out
  assert ("avx2" in out) == ("avx2" in _cpu_flags())
  assert "benchmark" not in out
  benchmark_row = next(
    line
    for line in _table_of(report, cache_dir).splitlines()
    if line.startswith("benchmark")
  )
  assert "images/s" in benchmark_row and "seed" in benchmark_row


def test_json_has_every_field_with_its_type(versions, report):
  tf_version, keras_version, build = versions
  assert report["tensorflow"] == tf_version and report["keras"] == keras_version
  built = report["built_for"]
  assert isinstance(built["summary"], str) and isinstance(built["libtpu"], bool)
  assert built["cuda"] == (
    build["cuda_version"] if build.get("is_cuda_build") else None
  )
  assert report["nvidia_driver"] is None or isinstance(
    report["nvidia_driver"], str
  )
  if not _has_nvidia_driver():
    assert report["nvidia_driver"] is None
  for library in report["cuda_libraries"]:
    assert set(library) == {"name", "loaded", "path", "error"}
    assert isinstance(library["loaded"], bool)
    assert library["loaded"] or library["error"]
  assert isinstance(report["gpus"], list) and isinstance(report["tpus"], list)
  assert "CPU:0" in report["devices"]
  assert report["precision"]["auto"] in PRECISIONS
  assert report["precision"]["reason"].startswith("auto:")
  assert isinstance(report["all_reduce"]["mirrored"], str)
  assert isinstance(report["all_reduce"]["multi_worker"], str)
  assert set(report["cpu"]["flags"]) <= _cpu_flags()
  assert isinstance(report["cpu"]["onednn"], bool)
  assert report["cpu"]["cores"] >= 1
  bench = report["benchmark"]
  assert bench["model"] == "seed" and bench["steps"] == 20
  assert isinstance(bench["global_batch_size"], int)
  assert bench["images_per_sec"] > 0 and bench["seconds"] > 0
  # Missing accelerators are explained, as --require_accelerator does.
  if not report["gpus"]:
    assert "sees no GPU" in report["problems"]["gpu"]
  if not report["tpus"]:
    assert "sees no TPU" in report["problems"]["tpu"]


def test_expect_gpu_without_one_exits_1_with_one_line(run_cli):
  if _has_nvidia_driver():
    pytest.skip(
      "this machine has an NVIDIA driver; the check is for one without"
    )
  start = time.monotonic()
  result = run_cli("trainer.doctor", "--expect=gpu", timeout=120)
  assert result.returncode == 1
  assert result.stdout == ""
  errors = [l for l in result.stderr.splitlines() if l.startswith("Error:")]
  assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
  assert errors[0].startswith("Error: --expect=gpu: TensorFlow ")
  assert "sees no GPU" in errors[0] and "likely cause:" in errors[0]
  assert time.monotonic() - start < 60  # no benchmark first


def test_bad_expect_value_names_the_valid_ones(run_cli):
  result = run_cli("trainer.doctor", "--expect=npu", timeout=120)
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert "--expect=npu" in result.stderr and "gpu|tpu" in result.stderr


def test_onednn_row_follows_tf_enable_onednn_opts(run_cli):
  """TensorFlow's own switch turns the row off, whatever the CPU (on is the
  default on CPUs with AVX512_VNNI/BF16 or AMX, off elsewhere)."""
  result = run_cli(
    "trainer.doctor",
    "--nobenchmark",
    timeout=300,
    env={"TF_ENABLE_ONEDNN_OPTS": "0"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  row = next(l for l in result.stdout.splitlines() if l.startswith("oneDNN"))
  assert row.split()[-1] == "off", row
