"""What the probes that report through conftest.run_probe/run_workers share:
small trainer configs, per-replica reads and the report line."""

import json
import os

import numpy as np

import configs


def tiny(**changes):
  """The tiny config, writing to $MODEL_DIR, with `changes`."""
  # float32 unless a probe says otherwise: `auto` differs between CPU kinds.
  values = dict(
    model_dir=os.environ["MODEL_DIR"],
    export=False,
    precision="float32",
    synthetic_dir=os.path.join(
      os.environ["XDG_CACHE_HOME"], "alexnet_tf", "synthetic"
    ),
  )
  values.update(changes)
  return configs.get_config("tiny").replace(**values)


def per_replica(strategy, variable):
  """Each replica's copy of `variable`, as numpy arrays."""
  return [np.asarray(v) for v in strategy.experimental_local_results(variable)]


def emit(**values):
  """Reports `values` (JSON) on the line conftest.probe_result reads."""
  print("PROBE " + json.dumps(values), flush=True)
