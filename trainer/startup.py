"""Starting TensorFlow without the lines no user can act on.

On a machine without NVIDIA's driver, TensorFlow's CUDA support says so while
its libraries load (twice: two libraries carry a copy) and again when it
first lists devices:

    WARNING: All log messages before absl::InitializeLog() is called are ...
    I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, ...
    E0000 ... cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error ...

On CPUs where TensorFlow turns oneDNN's custom operations on by default
(those with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX, e.g. Sapphire Rapids)
the same libraries also say, twice:

    I0000 ... port.cc:153] oneDNN custom operations are on. You may see ...

The first two kinds come from library initialisers logging through absl
before anything has set absl up, so TF_CPP_MIN_LOG_LEVEL cannot hide them
(not even at 3); cuInit's hides only with every other error. So that a
command prints the same on every CPU kind, `start_tensorflow` imports
TensorFlow and lets it probe once with file descriptor 2 captured, then
writes back every line but these. (`python -m trainer.doctor` says whether
oneDNN is on.) A failing cuInit on a machine that has the driver is a broken
GPU set-up: that line is kept.
"""

import contextlib
import os
import re
import sys
import tempfile

_ABSL_NOTE = (
  "WARNING: All log messages before absl::InitializeLog() is "
  "called are written to STDERR"
)
_NO_DRIVER = re.compile(
  r"\] Could not find cuda drivers on your machine, GPU "
  r"will not be used\.$"
)
_CUINIT_FAILED = re.compile(r"\] failed call to cuInit: ")
_ONEDNN_ON = re.compile(r"\] oneDNN custom operations are on\. ")


def _without_probe_lines(lines):
  """`lines` (bytes, with their endings) minus the CUDA-probe and oneDNN
  lines."""
  texts = [line.decode("utf-8", "replace").rstrip("\r\n") for line in lines]
  no_driver = any(_NO_DRIVER.search(text) for text in texts)
  return [
    line
    for line, text in zip(lines, texts)
    if text != _ABSL_NOTE
    and not _NO_DRIVER.search(text)
    and not _ONEDNN_ON.search(text)
    and not (no_driver and _CUINIT_FAILED.search(text))
  ]


@contextlib.contextmanager
def without_probe_noise():
  """Holds back what is written to stderr (file descriptor 2, so C++ too)
  inside the block; at its end, even by an exception, writes it all but
  TensorFlow's CUDA-probe lines, in order."""
  sys.stderr.flush()
  try:
    saved = os.dup(2)
  except OSError:  # No stderr at all: nothing to filter.
    yield
    return
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = b"".join(_without_probe_lines(captured.read().splitlines(True)))
      if kept:
        os.write(2, kept)


def start_tensorflow():
  """Imports TensorFlow and lets it look for GPUs, without the CUDA-probe lines.

  Call it before anything else imports TensorFlow; logical CPU devices can
  still be configured afterwards (listing devices does not start the runtime).

  Returns:
    The tensorflow module.
  """
  with without_probe_noise():
    import tensorflow as tf

    tf.config.list_physical_devices()  # Loads the CUDA platform: cuInit.
  return tf
