"""Shared fixtures: run the CLI as a user would, with an isolated cache."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
  """One synthetic-data cache for the whole session (drawn once)."""
  return str(tmp_path_factory.mktemp("cache"))


def cli_env(cache_dir, **extra):
  env = dict(os.environ)
  env.update({"XDG_CACHE_HOME": cache_dir, "TF_CPP_MIN_LOG_LEVEL": "2",
              "PYTHONPATH": REPO})
  for key in ("TF_CONFIG", "CLUSTER_SPEC", "AIP_MODEL_DIR", "TPU_NAME"):
    env.pop(key, None)
  env.update(extra)
  return env


@pytest.fixture
def run_cli(cache_dir):
  """run_cli(module, *args, env=None, timeout=...) -> CompletedProcess."""
  def run(module, *args, env=None, timeout=600, check=False):
    result = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO,
        env=cli_env(cache_dir, **(env or {})), capture_output=True, text=True,
        timeout=timeout)
    if check and result.returncode != 0:
      raise AssertionError(f"{module} {args} exited {result.returncode}:\n"
                           f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result
  return run


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
