"""What a restart finds in its model dir, decided before training: whether
its checkpoints can be resumed with these options, whether the run already
finished (exporting it if a kill left the export partial), and whether it
was written with an older input order."""

import tensorflow as tf

from trainer import config as config_lib
from trainer import data
from trainer.errors import UserError
from trainer.logs import log
from trainer.loop import epoch_end
from trainer.loop import finish


def finished_already(trainer, previous_status):
  """The summary of a model dir that already finished (exporting it if a
  kill left its export partial), or None if there is training to do.

  A completed run trains on when asked for more epochs; an early-stopped
  one stays stopped (re-running its command must not train again). The
  early-stop decision is re-derived from the restored state too: a run
  killed after its last checkpoint but before status.json said so stays
  stopped."""
  state = trainer.state
  early_stopped = previous_status == "early_stopped" or (
    epoch_end.patience_exhausted(trainer.config, state)
  )
  if not trainer.any_worker(
    int(state.epoch.numpy()) >= trainer.config.epochs or early_stopped
  ):
    return None
  previous_status = (
    previous_status
    if previous_status in ("completed", "early_stopped")
    else ("early_stopped" if early_stopped else "completed")
  )
  # A run killed while exporting left no whole export: finish it.
  if trainer.config.export and trainer.any_worker(
    trainer.is_chief and not trainer.run_dir.export_is_whole()
  ):
    log.info(
      f"This model dir finished training ({int(state.epoch.numpy())}"
      " epochs) but holds no whole export: exporting it now."
    )
    return finish.finish(trainer, previous_status)
  log.info(
    f"Nothing to train: this model dir already finished "
    f"({int(state.epoch.numpy())} epochs, {previous_status or 'completed'}"
    "). Use a new --model_dir to retrain."
  )
  return finish.finish(
    trainer, previous_status or "completed", with_export=False
  )


def check_resumable(trainer):
  """Before restoring: one line if this model dir's checkpoints were
  written with options that lay out other variables, or in another
  precision. Every worker raises when any finds a conflict (`auto`
  resolves per machine), instead of the others waiting for it in the
  next collective."""
  conflict = None
  if tf.train.latest_checkpoint(
    trainer.run_dir.checkpoints
  ) and tf.io.gfile.exists(trainer.run_dir.config):
    conflict = config_lib.resume_conflict(
      config_lib.load(trainer.run_dir.config), trainer.config
    ) or (
      config_lib.precision_conflict(
        config_lib.load_resolved(trainer.run_dir.config).get("precision"),
        trainer.precision,
        trainer.config.precision,
      )
    )
  if trainer.any_worker(bool(conflict)):
    raise UserError(
      conflict
      or "another worker cannot resume this model dir's checkpoints "
      "(its error says why)"
    )


def note_other_input_order(trainer):
  """Says so when a model dir read in another input order (an older
  version's, or another --shards_per_segment) resumes mid-epoch: the rest
  of that epoch is read in the current order."""
  if not tf.io.gfile.exists(trainer.run_dir.config):
    return
  recorded = config_lib.load_resolved(trainer.run_dir.config).get(
    "input_order", "one shuffle over the whole epoch (an older version)"
  )
  current = data.input_order(trainer.train_spec)
  position = trainer.state.position_in_epoch()
  if recorded != current and position and trainer.is_chief:
    log.warning(
      f"This model dir read epoch {int(trainer.state.epoch.numpy()) + 1} "
      f"in {recorded}; the rest of it is read in {current} (some of its "
      "records may be seen twice or not at all); later epochs are exact."
    )
