"""TensorFlow's start-up lines: which are dropped, and that nothing else is."""

import os
import subprocess
import sys

from conftest import REPO
from conftest import cli_env
from conftest import probe_command
import pytest

from trainer import startup

NO_DRIVER = (
  "I0000 00:00:1795693628.887148   16000 cudart_stub.cc:31] Could not "
  "find cuda drivers on your machine, GPU will not be used."
)
ABSL_NOTE = (
  "WARNING: All log messages before absl::InitializeLog() is called "
  "are written to STDERR"
)
CUINIT = (
  "E0000 00:00:1795693633.666744   16000 cuda_platform.cc:52] failed "
  "call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: "
  "UNKNOWN ERROR (303)"
)
ONEDNN = (
  "I0000 00:00:1796528840.650596    4730 port.cc:153] oneDNN custom "
  "operations are on. You may see slightly different numerical "
  "results due to floating-point round-off errors from different "
  "computation orders. To turn them off, set the environment variable "
  "`TF_ENABLE_ONEDNN_OPTS=0`."
)
REAL = "W0000 00:00:1795693650.254164   16000 some_op.cc:12] A real warning."


def _stderr_lines(capfd, lines, fail=False):
  """Writes `lines` to file descriptor 2 (as TensorFlow's C++ code does) and
  one line through Python's sys.stderr inside the filter, then raises if
  asked; returns (raised, what reached file descriptor 2)."""
  raised = False
  # As in a command, sys.stderr writes to file descriptor 2 (pytest's own
  # sys.stderr bypasses it).
  pytest_stderr, sys.stderr = sys.stderr, open(2, "w", closefd=False)
  try:
    with startup.without_probe_noise():
      for line in lines:
        os.write(2, (line + "\n").encode())
      print("from python", file=sys.stderr)
      if fail:
        raise RuntimeError("failed inside")
  except RuntimeError:
    raised = True
  finally:
    print("after", file=sys.stderr)
    sys.stderr.close()
    sys.stderr = pytest_stderr
  return raised, capfd.readouterr().err.splitlines()


def test_probe_and_onednn_lines_are_dropped_and_real_lines_kept_in_order(capfd):
  raised, lines = _stderr_lines(
    capfd,
    [ABSL_NOTE, ONEDNN, NO_DRIVER, REAL, ABSL_NOTE, ONEDNN, NO_DRIVER, CUINIT],
  )
  assert not raised
  assert lines == [REAL, "from python", "after"]


def test_cuinit_failure_with_a_driver_installed_is_kept(capfd):
  # Without "Could not find cuda drivers" the driver is there and cuInit
  # failing is a broken GPU set-up: the user must see it.
  _, lines = _stderr_lines(capfd, [ABSL_NOTE, CUINIT, REAL])
  assert lines == [CUINIT, REAL, "from python", "after"]


def test_lines_reach_stderr_when_the_block_fails(capfd):
  raised, lines = _stderr_lines(capfd, [REAL, NO_DRIVER], fail=True)
  assert raised
  assert lines == [REAL, "from python", "after"]


def _start(cache_dir, probe, onednn):
  """The stderr of `probe`, run as a user runs a command."""
  env = cli_env(cache_dir, TF_ENABLE_ONEDNN_OPTS=onednn)
  env.pop("TF_CPP_MIN_LOG_LEVEL")  # The CLI's own default, as a user runs it.
  result = subprocess.run(
    probe_command(probe),
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stderr


# oneDNN's custom operations are on by default on CPUs with AVX512_VNNI,
# AVX512_BF16 or AMX and off on others; TF_ENABLE_ONEDNN_OPTS sets them
# either way, so both CPU kinds' start-up is checked on any CPU.
@pytest.mark.multiprocess
@pytest.mark.parametrize("onednn", ["0", "1"])
def test_start_tensorflow_prints_nothing_on_a_machine_without_a_gpu(
  cache_dir, onednn
):
  plain = _start(cache_dir, "startup:plain", onednn)
  if "Could not find cuda drivers" not in plain:
    pytest.skip("this TensorFlow finds a CUDA driver or probes silently")
  assert "failed call to cuInit" in plain  # What the filter must remove.
  assert ("oneDNN custom operations are on" in plain) == (onednn == "1")
  quiet = _start(cache_dir, "startup:quiet", onednn)
  assert quiet == ""
