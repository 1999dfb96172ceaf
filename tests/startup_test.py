"""TensorFlow's start-up lines: which are dropped, and that nothing else is."""

import subprocess
import sys

import pytest

from conftest import REPO, cli_env

NO_DRIVER = ("I0000 00:00:1795693628.887148   16000 cudart_stub.cc:31] Could not "
             "find cuda drivers on your machine, GPU will not be used.")
ABSL_NOTE = ("WARNING: All log messages before absl::InitializeLog() is called "
             "are written to STDERR")
CUINIT = ("E0000 00:00:1795693633.666744   16000 cuda_platform.cc:52] failed "
          "call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: "
          "UNKNOWN ERROR (303)")
REAL = "W0000 00:00:1795693650.254164   16000 some_op.cc:12] A real warning."

# Writes `lines` to file descriptor 2 (as TensorFlow's C++ code does) and one
# line through Python's sys.stderr, inside the filter, then raises if asked.
WRITER = """
import os, sys
from trainer import startup
lines, fail = {lines!r}, {fail!r}
with startup.without_probe_noise():
  for line in lines:
    os.write(2, (line + "\\n").encode())
  print("from python", file=sys.stderr)
  if fail:
    raise SystemExit("failed inside")
print("after", file=sys.stderr)
"""


def _stderr_lines(cache_dir, lines, fail=False):
  result = subprocess.run(
      [sys.executable, "-c", WRITER.format(lines=lines, fail=fail)], cwd=REPO,
      env=cli_env(cache_dir), capture_output=True, text=True, timeout=60)
  return result.returncode, result.stderr.splitlines()


def test_cuda_probe_lines_are_dropped_and_real_lines_kept_in_order(cache_dir):
  code, lines = _stderr_lines(
      cache_dir, [ABSL_NOTE, NO_DRIVER, REAL, ABSL_NOTE, NO_DRIVER, CUINIT])
  assert code == 0
  assert lines == [REAL, "from python", "after"]


def test_cuinit_failure_with_a_driver_installed_is_kept(cache_dir):
  # Without "Could not find cuda drivers" the driver is there and cuInit
  # failing is a broken GPU set-up: the user must see it.
  code, lines = _stderr_lines(cache_dir, [ABSL_NOTE, CUINIT, REAL])
  assert code == 0
  assert lines == [CUINIT, REAL, "from python", "after"]


def test_lines_reach_stderr_when_the_block_fails(cache_dir):
  code, lines = _stderr_lines(cache_dir, [REAL, NO_DRIVER], fail=True)
  assert code == 1
  assert lines == [REAL, "from python", "failed inside"]


def _start(cache_dir, code):
  env = cli_env(cache_dir)
  env.pop("TF_CPP_MIN_LOG_LEVEL")  # The CLI's own default, as a user runs it.
  result = subprocess.run(
      [sys.executable, "-c", "import os\n"
       "os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')\n" + code],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stderr


def test_start_tensorflow_prints_nothing_on_a_machine_without_a_gpu(cache_dir):
  plain = _start(cache_dir, "import tensorflow as tf\n"
                 "tf.config.list_physical_devices()\n")
  if "Could not find cuda drivers" not in plain:
    pytest.skip("this TensorFlow finds a CUDA driver or probes silently")
  assert "failed call to cuInit" in plain  # What the filter must remove.
  quiet = _start(cache_dir, "from trainer import startup\n"
                 "tf = startup.start_tensorflow()\n"
                 "tf.config.list_physical_devices()\n")
  assert quiet == ""
