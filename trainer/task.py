"""Train AlexNet: python -m trainer.task [--config=NAME] [--flag=value ...]

Every option of trainer/config.py is a flag; --config picks a named
experiment from configs/, a config.json a run wrote or a Python config
module, whose values become the flags' defaults. Run with
--helpshort for the manual. This file is intentionally short: the work is in
trainer.train.train(config), which tests and notebooks call directly.
"""

import logging
import os
import sys

# Hide TensorFlow's C++ INFO lines (CUDA probing etc.); warnings still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import app
from absl import flags
from absl import logging as absl_logging

import configs
from trainer import config as config_lib
from trainer import errors
from trainer import hypertune
from trainer import startup
from trainer.errors import PREEMPTED_EXIT_CODE
from trainer.errors import UserError


def _config_from_argv(argv):
  """The Config --config names (a name, config.json or .py), read from the
  raw argv before flags exist: its values are the flags' defaults."""
  try:
    return configs.from_argv(argv)
  except UserError as e:
    print(f"Usage error: --config: {e}", file=sys.stderr)
    sys.exit(errors.USAGE_EXIT_CODE)


DEFAULTS = _config_from_argv(sys.argv)
config_lib.define_flags(flags.FLAGS, DEFAULTS)
flags.adopt_module_key_flags(config_lib)  # So --helpshort lists them.


def _finished_line(summary):
  """The run's last line, from the summary train() returns."""
  epochs = summary["epoch"]
  parts = [
    f"{summary['status']} - {epochs} epoch{'' if epochs == 1 else 's'}",
    f"step {summary['step']}",
  ]
  if summary["best_val_accuracy"] >= 0:  # -1: there was no validation data.
    parts.append(f"best val_accuracy {summary['best_val_accuracy']:.4f}")
  best_metric, best_value = (
    summary.get("best_metric"),
    summary.get("best_metric_value", float("inf")),
  )
  if best_metric not in (None, "val_accuracy") and abs(best_value) < float(
    "inf"
  ):
    parts.append(f"best {best_metric} {best_value:.4f}")
  if summary.get("exported"):
    parts.append(f"exported to {summary['exported']}")
  else:
    parts.append(f"outputs in {summary['model_dir']}")
  # In full: equal digests on every worker prove they hold one model.
  parts.append(f"weights sha256 {summary['weights_sha256']}")
  return "Finished: " + ", ".join(parts)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(
      f"Unexpected arguments: {argv[1:]}", exitcode=errors.USAGE_EXIT_CODE
    )
  # TensorFlow's and Keras' INFO lines (collectives, savers) drown the
  # progress; keep ours.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("trainer").setLevel(logging.INFO)
  try:
    # --config itself holds what was typed; DEFAULTS records where the values
    # came from (a re-run from a config.json keeps the name it records).
    config = config_lib.from_flags(flags.FLAGS).replace(config=DEFAULTS.config)
    hypertune.require_reporter(config.hypertune_metric)
    startup.start_tensorflow()  # After flags are checked: errors come fast.
    from trainer import train

    try:
      summary = train.train(config, configs.run_name(config.config))
    except Exception as e:  # Past the loop too: counting, checkpoints, export.
      if errors.unanswered(e):
        raise errors.Unanswered(errors.unanswered_message(e)) from None
      raise
  except UserError as e:
    print(f"Error: {e}", file=sys.stderr)
    if isinstance(e, errors.Unanswered):
      return errors.UNANSWERED_EXIT_CODE
    return errors.USAGE_EXIT_CODE if isinstance(e, errors.UsageError) else 1
  from trainer import logs

  logs.log.info(_finished_line(summary), extra=logs.EVERY_WORKER)
  if summary["status"] == "preempted":
    return PREEMPTED_EXIT_CODE
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=errors.parse_flags)
