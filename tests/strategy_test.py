"""Strategy selection and precision, on this machine.

Logical CPU devices can only be configured before TensorFlow initialises,
so each device set-up runs in a fresh interpreter; the questions a plain
process answers share one (`plain_machine`); parsing the cluster from the
environment runs in the test process.
"""

import json
import os
import shutil
import subprocess
import time

from conftest import REPO
from conftest import cli_env
from conftest import probe_command
import pytest


def probe(cache_dir, strategy="auto", cpu_devices=0, devices=""):
  """What tests/probes/strategy.py's describe() says of this set-up."""
  command = probe_command(
    "strategy:describe_strategy", strategy, cpu_devices, devices
  )
  result = subprocess.run(
    command,
    cwd=REPO,
    env=cli_env(cache_dir),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def _cpu_has_bf16():
  with open("/proc/cpuinfo") as f:
    return any(flag in f.read().split() for flag in ("avx512_bf16", "amx_bf16"))


@pytest.fixture(scope="module")
def plain_machine(cache_dir):
  """What a process that splits nothing sees, asked once (one interpreter
  answers every question that needs no device set-up of its own)."""
  result = subprocess.run(
    probe_command("strategy:plain_machine"),
    cwd=REPO,
    env=cli_env(cache_dir),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.multiprocess
def test_auto_on_this_machine_is_one_cpu_device(plain_machine):
  got = plain_machine["auto"]
  assert got["name"] == "one_device" and got["type"] == "OneDeviceStrategy"
  assert "no GPU or TPU" in got["reason"]
  expected = "mixed_bfloat16" if _cpu_has_bf16() else "float32"
  assert got["precision"] == expected


@pytest.mark.multiprocess
def test_auto_with_logical_cpus_is_mirrored(cache_dir):
  got = probe(cache_dir, cpu_devices=2)
  assert got["name"] == "mirrored" and got["replicas"] == 2
  assert got["type"] == "MirroredStrategy"


@pytest.mark.multiprocess
def test_auto_with_multi_task_tf_config_picks_multi_worker(cache_dir, tmp_path):
  from conftest import run_workers

  results = run_workers(
    "strategy:auto_on_workers", cache_dir, tmp_path, timeout=120
  )
  for index, got in enumerate(results):
    assert got == {
      "name": "multi_worker",
      "reason": "auto: TF_CONFIG names 2 tasks",
      "chief": index == 0,
      "type": "CollectiveAllReduceStrategy",
      "replicas": 2,
    }, got


@pytest.mark.multiprocess
def test_mirrored_without_gpus_says_it_uses_the_cpu(plain_machine):
  got = plain_machine["mirrored"]
  assert got["replicas"] == 1
  assert "no GPU" in got["reason"] and "--cpu_devices" in got["reason"], got


def _cluster_from(monkeypatch, **env):
  """cluster_spec_from_env() with only these of Vertex's variables set (it
  reads the environment, no devices: no fresh interpreter needed)."""
  from trainer.platform import cluster

  for key in ("TF_CONFIG", "CLUSTER_SPEC"):
    monkeypatch.delenv(key, raising=False)
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  return cluster.cluster_spec_from_env()


def test_vertex_cluster_spec_becomes_tf_config(monkeypatch):
  spec = {
    "cluster": {
      "workerpool0": ["h0:2222"],
      "workerpool1": ["h1:2222", "h2:2222"],
    },
    "task": {"type": "workerpool1", "index": 1},
  }
  got = _cluster_from(monkeypatch, CLUSTER_SPEC=json.dumps(spec))
  assert got == {
    "cluster": {"chief": ["h0:2222"], "worker": ["h1:2222", "h2:2222"]},
    "task": {"type": "worker", "index": 1},
  }


@pytest.mark.multiprocess
def test_mirrored_with_device_list(cache_dir):
  got = probe(
    cache_dir, strategy="mirrored", cpu_devices=2, devices="/cpu:0,/cpu:1"
  )
  assert got["replicas"] == 2


@pytest.mark.multiprocess
@pytest.mark.parametrize(
  "precision,compute",
  [
    ("float32", "float32"),
    ("mixed_bfloat16", "bfloat16"),
    ("mixed_float16", "float16"),
  ],
)
def test_explicit_precision_sets_the_models_compute_dtype(
  plain_machine, precision, compute
):
  got = plain_machine[precision]
  assert got == {
    "why": "requested",
    "conv": compute,
    "variables": "float32",
    "output": "float32",
  }


def test_data_service_pool_is_not_part_of_the_training_cluster(monkeypatch):
  # Vertex's TF_CONFIG calls pool 2 (launch.vertex's tf.data service) "ps".
  tf_config = {
    "cluster": {
      "chief": ["h0:2222"],
      "worker": ["h1:2222"],
      "ps": ["h2:2222", "h3:2222"],
    },
    "task": {"type": "worker", "index": 0},
    "environment": "cloud",
  }
  assert _cluster_from(monkeypatch, TF_CONFIG=json.dumps(tf_config)) == {
    "cluster": {"chief": ["h0:2222"], "worker": ["h1:2222"]},
    "task": {"type": "worker", "index": 0},
    "environment": "cloud",
  }
  spec = {
    "cluster": {"workerpool0": ["h0:2222"], "workerpool2": ["h2:2222"]},
    "task": {"type": "workerpool0", "index": 0},
  }
  assert _cluster_from(monkeypatch, CLUSTER_SPEC=json.dumps(spec)) == {
    "cluster": {"chief": ["h0:2222"]},
    "task": {"type": "chief", "index": 0},
  }
  spec["task"] = {"type": "workerpool2", "index": 0}
  assert _cluster_from(monkeypatch, CLUSTER_SPEC=json.dumps(spec)) is None


def _build_summary():
  """What this TensorFlow says it was built for, as the error line puts it."""
  import tensorflow as tf

  build = tf.sysconfig.get_build_info()
  if build.get("is_cuda_build"):
    return f"CUDA {build['cuda_version']} and cuDNN {build['cudnn_version']}"
  return "a CPU-only build"


@pytest.mark.multiprocess
@pytest.mark.parametrize(
  "accelerator,missing", [("gpu", "no GPU"), ("tpu", "no TPU")]
)
def test_required_accelerator_missing_exits_at_once_with_one_line(
  run_cli, tmp_path, accelerator, missing
):
  if accelerator == "gpu" and (
    os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi")
  ):
    pytest.skip(
      "this machine has an NVIDIA driver; the check is for one without"
    )
  cache = tmp_path / "cache"
  model_dir = tmp_path / "run"
  start = time.monotonic()
  result = run_cli(
    "trainer.task",
    "--config=tiny",
    f"--model_dir={model_dir}",
    f"--require_accelerator={accelerator}",
    env={"XDG_CACHE_HOME": str(cache)},
    timeout=120,
  )
  elapsed = time.monotonic() - start
  assert result.returncode == 1, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("Error:")]
  assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
  line = errors[0]
  # What TF sees, what it was built for, and why.
  assert f"--require_accelerator={accelerator}:" in line and missing in line
  assert "only CPU:0" in line and _build_summary() in line, line
  assert "likely cause:" in line, line
  if accelerator == "gpu":
    assert "no NVIDIA driver" in line, line  # this machine has none
  # At once: before the banner, the synthetic data, the model dir.
  assert "task=" not in result.stdout
  assert not model_dir.exists() and not (cache / "alexnet_tf").exists()
  assert elapsed < 60, elapsed


@pytest.mark.multiprocess
def test_one_cpu_device_gets_the_same_batches_without_tf_data_warning(
  cache_dir,
):
  env = cli_env(cache_dir)
  env.pop("TF_CPP_MIN_LOG_LEVEL")
  command = probe_command(
    "strategy:one_device_batches", f"{cache_dir}/alexnet_tf/synthetic"
  )
  result = subprocess.run(
    command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr[-2000:]
  # Equal to what OneDeviceStrategy's own iterator yields; another epoch's
  # order (the negative control) differs.
  assert result.stdout.split()[-2:] == ["True", "False"]
  ours, theirs = result.stderr.split("MARK")
  assert "GeneratorDatasetOp" not in ours
  assert "GeneratorDatasetOp" in theirs  # The warning the check looks for.
