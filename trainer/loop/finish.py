"""The end of a run: status.json, the export of the best checkpoint (whole
or not at all: IN_PROGRESS first, COMPLETE last), the summary `train()`
returns."""

import shutil
import tempfile

import tensorflow as tf

from trainer import faults
from trainer import model as model_lib
from trainer import outputs
from trainer import plots
from trainer import records
from trainer import serving
from trainer.loop import epoch_end


def export(trainer):
  """The chief exports to the run's export dir; the others to a scratch dir
  (TF needs every worker to take part). Returns the chief's export dir.

  trainer: the run's Trainer (its config, model, run dir, state)."""
  config = trainer.config
  target = trainer.run_dir
  if not trainer.is_chief:
    scratch = tempfile.mkdtemp(prefix="alexnet-export-")
    target = outputs.RunDir(scratch, scratch, scratch)
  portable = model_lib.portable_copy(
    trainer.model,
    config.model,
    config.num_classes,
    trainer.image_size,
    config.dropout_rate,
    "float32" if config.export_precision == "float32" else trainer.precision,
  )
  faults.point("export:before")
  if trainer.is_chief:
    if tf.io.gfile.exists(target.export):
      tf.io.gfile.rmtree(target.export)  # A partial export of a killed trainer.
    tf.io.gfile.makedirs(target.export)
    records.write_text_atomically(target.export_in_progress, "exporting\n")
  serving.export(
    portable, target, trainer.image_size, config.augment, trainer.class_names
  )
  if not trainer.is_chief:
    shutil.rmtree(target.root, ignore_errors=True)
    return None
  faults.point("export:before_marker")
  records.write_text_atomically(
    target.export_complete, f"step {int(trainer.state.step.numpy())}\n"
  )
  tf.io.gfile.remove(target.export_in_progress)
  faults.point("export:after")
  return target.export


def finish(trainer, status, with_export=True):
  """Writes the end of the run (`status`); exports if it completed or
  stopped early (and `with_export`). Returns the summary."""
  state, config = trainer.state, trainer.config
  trainer.writer.write_status(status, state)
  faults.point("status:after")
  summary = {
    "status": status,
    "epoch": int(state.epoch.numpy()),
    "step": int(state.step.numpy()),
    "model_dir": trainer.model_dir,
    "best_val_accuracy": float(state.best_val_accuracy.numpy()),
    "best_metric": config.best_metric,
    "best_metric_value": epoch_end.signed(
      config.best_metric, float(state.best_metric_value.numpy())
    ),
    # Of the weights this worker trained, before anything is
    # restored: equal digests on every worker prove one model.
    "weights_sha256": model_lib.weights_digest(trainer.model),
  }
  # The chief's last save_best is complete before anyone reads best/.
  trainer.any_worker(False)
  if with_export and status in ("completed", "early_stopped") and config.export:
    trainer.checkpoints.restore_best()
    summary["exported"] = export(trainer)
  if trainer.is_chief:
    plots.plot_run(trainer.model_dir)  # A killed run's last epoch included.
  trainer.writer.close()
  trainer.checkpoints.cleanup()
  faults.point("finish:after")
  return summary
