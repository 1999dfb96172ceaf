"""Reports the tuned metric to a Vertex AI hyperparameter tuning job.

Vertex AI runs every trial of a tuning job as a CustomJob whose processes have
CLOUD_ML_TRIAL_ID set, with the trial's values appended to the trainer's flags
and its own AIP_MODEL_DIR (<base output dir>/<trial id>/model), so trials never
share checkpoints. The trial's measurements are read from the file
cloudml-hypertune writes: CLOUD_ML_HP_METRIC_FILE, by default
/tmp/hypertune/output.metrics, one JSON line per report (the library keeps its
last 100). Outside a trial, or without --hypertune_metric, nothing here does
anything, and the library need not be installed.
"""

import functools
import os

from trainer.errors import UserError

TRIAL_ID_ENV = "CLOUD_ML_TRIAL_ID"


def trial_id():
  """This process's tuning trial id, or "" when it is not a trial."""
  return os.environ.get(TRIAL_ID_ENV, "")


def require_reporter(metric_name):
  """Fails at once when a trial must report but cannot.

  Args:
    metric_name: --hypertune_metric ("" = nothing to report).

  Raises:
    UserError: this is a tuning trial and cloudml-hypertune is missing.
  """
  if metric_name and trial_id():
    _reporter(os.environ.get("CLOUD_ML_HP_METRIC_FILE", ""))


def report(metric_name, record):
  """Reports `record[metric_name]` for `record["epoch"]` in a tuning trial.

  A no-op unless this process is a trial and `metric_name` is set. The epoch
  is the measurement's step: trials that tune the batch size run different
  numbers of steps per epoch, and Vertex compares (and stops early) by step.

  Args:
    metric_name: --hypertune_metric ("" = nothing to report).
    record: the epoch's record, as appended to metrics.jsonl.

  Raises:
    UserError: the record has no such metric, or cloudml-hypertune is missing.
  """
  if not metric_name or not trial_id():
    return
  if metric_name not in record:
    logged = sorted(k for k in record if k not in ("epoch", "step"))
    raise UserError(
      f"--hypertune_metric={metric_name}: this run logs no "
      f"{metric_name} (it logs {', '.join(logged)}); val_ metrics "
      "need validation data (--eval_data)"
    )
  reporter = _reporter(os.environ.get("CLOUD_ML_HP_METRIC_FILE", ""))
  reporter.report_hyperparameter_tuning_metric(
    hyperparameter_metric_tag=metric_name,
    metric_value=record[metric_name],
    global_step=record["epoch"],
  )


# One reporter per metric file for the life of the process: the library
# rewrites the file with every entry it holds, so a new one would drop the
# epochs reported before.
@functools.cache
def _reporter(metric_file):
  del metric_file  # The cache key; the library reads the variable itself.
  try:
    import hypertune
  except ImportError:
    raise UserError(
      f"this process is Vertex AI tuning trial {trial_id()} "
      f"({TRIAL_ID_ENV} is set) and must report --hypertune_metric, but the "
      "cloudml-hypertune package is missing: pip install cloudml-hypertune "
      "(or alexnet-tf[vertex]) where the trainer runs"
    ) from None
  return hypertune.HyperTune()
