"""Test-only faults: die at a named point as `kill -9` would, or plant a NaN.

The crash-point tests (tests/crash_points_test.py) kill a run at every point
where its durable state changes and check that re-running the same command
ends exactly as an uninterrupted run. Two environment variables, read once
when the trainer starts; unset (always, outside those tests) they cost one
dictionary lookup per point:

    ALEXNET_CRASH_AT=POINT[:N]   at the Nth visit (default 1) of POINT, exit
                                 at once with CRASH_EXIT_CODE: os._exit, no
                                 cleanup, no flush - what kill -9 leaves.
    ALEXNET_CRASH_WORKER=TYPE:I  only TF_CONFIG's task TYPE:I (e.g.
                                 worker:1) dies; the cluster's others run on.
    ALEXNET_NAN_AT_STEP=S        before the training call that starts at
                                 step S, fill the output layer's kernel with
                                 NaN (once per process), as a diverging
                                 run would.

POINTS names every point, in the order a run meets them.
"""

import json
import os

CRASH_EXIT_CODE = 86

POINTS = (
  # Each checkpoint save (step and epoch checkpoints) and its index.
  "checkpoint_save:before",
  "checkpoint_save:after",
  # Epoch end: best/, then the epoch's metrics line, then the checkpoint.
  "epoch_end:before",
  "best_save:after",
  "metrics:after",
  "epoch_checkpoint:after",
  # The early-stop and plateau decisions, after the epoch's checkpoint.
  "early_stop:decided",
  # A NaN rollback, once the weights are back.
  "rollback:after",
  # The end of the run: status.json, then the export (before, between its
  # files, before its marker, after), then the rest.
  "status:after",
  "export:before",
  "export:keras_written",
  "export:saved_model_written",
  "export:before_marker",
  "export:after",
  "finish:after",
)


def _parse(value):
  """'NAME:WHEN[:N]' -> (point, N), or None."""
  if not value:
    return None
  parts = value.split(":")
  point = ":".join(parts[:2])
  if point not in POINTS or len(parts) > 3:
    raise ValueError(
      f"ALEXNET_CRASH_AT={value!r}: not POINT[:N] with POINT "
      f"one of {', '.join(POINTS)}"
    )
  return point, int(parts[2]) if len(parts) == 3 else 1


class _Faults:
  """The faults asked for, read once; what has been visited so far."""

  def __init__(self, environ):
    self.crash_at = _parse(environ.get("ALEXNET_CRASH_AT", ""))
    worker = environ.get("ALEXNET_CRASH_WORKER")
    if worker is not None and _task(environ) != worker:
      self.crash_at = None
    self.nan_at_step = int(environ.get("ALEXNET_NAN_AT_STEP") or 0)
    self.visits = {}


def _task(environ):
  """TF_CONFIG's task as TYPE:INDEX ("" without one)."""
  task = json.loads(environ.get("TF_CONFIG") or "{}").get("task", {})
  return f"{task['type']}:{task.get('index', 0)}" if task else ""


_FAULTS = _Faults(os.environ)


def point(name):
  """Marks a point where the run's durable state changes; dies there when
  ALEXNET_CRASH_AT names it (the Nth time)."""
  if _FAULTS.crash_at is None:
    return
  _FAULTS.visits[name] = _FAULTS.visits.get(name, 0) + 1
  if (name, _FAULTS.visits[name]) == _FAULTS.crash_at:
    os._exit(CRASH_EXIT_CODE)


def plant_nan(step, model):
  """Before the call starting at `step`: the output kernel becomes NaN when
  ALEXNET_NAN_AT_STEP says so (once per process)."""
  if _FAULTS.nan_at_step and step == _FAULTS.nan_at_step:
    _FAULTS.nan_at_step = 0
    import numpy as np

    kernel = model.get_layer("predictions").kernel
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
