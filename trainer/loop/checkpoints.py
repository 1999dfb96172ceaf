"""The run's latest and best checkpoints, chief-aware.

Only the chief writes the model dir's checkpoints/ and best/; the other
workers must still take part in saving (TensorFlow requires it), to a local
temporary directory removed at the end, and restore from the chief's files.
"""

import shutil
import tempfile

import tensorflow as tf

from trainer import errors
from trainer import faults
from trainer.logs import log
from trainer.outputs import RunDir


class CheckpointSet:
  """Recent checkpoints plus the best one, chief-aware."""

  def __init__(self, checkpoint, run_dir, is_chief, task, max_to_keep):
    self.checkpoint = checkpoint
    self.is_chief = is_chief
    if is_chief:
      saving, self._scratch = run_dir, None
    else:
      self._scratch = tempfile.mkdtemp(
        prefix=f"alexnet-{task.replace(':', '')}-"
      )
      saving = RunDir(self._scratch, self._scratch, self._scratch)
    self.latest = tf.train.CheckpointManager(
      checkpoint, saving.checkpoints, max_to_keep=max_to_keep
    )
    self.best = tf.train.CheckpointManager(
      checkpoint, saving.best, max_to_keep=1
    )
    # Every worker restores from the chief's files: they are the shared truth.
    self._chief_latest_dir = run_dir.checkpoints
    self._chief_best_dir = run_dir.best

  def restore_latest(self):
    """Restores the newest readable checkpoint; returns its path, or None.

    A checkpoint whose files a kill or a failing disk left damaged (a
    truncated data file, a missing shard: Cloud Storage writes are no atomic
    renames) is skipped for the one before it, with a warning. Every worker
    reads the same files, so all pick the same one.
    """
    state = tf.train.get_checkpoint_state(self._chief_latest_dir)
    paths = list(state.all_model_checkpoint_paths) if state else []
    for path in reversed(paths):
      try:
        self.checkpoint.restore(path).expect_partial()
      except (
        tf.errors.DataLossError,
        tf.errors.NotFoundError,
        tf.errors.OutOfRangeError,
        # TensorFlow's checkpoint reader reports a short read this way.
        IndexError,
      ) as e:
        log.warning(
          f"Checkpoint {path} is damaged ({errors.describe(e)}); "
          "trying the one before it."
        )
        continue
      return path
    return None

  def restore_best(self):
    path = tf.train.latest_checkpoint(self._chief_best_dir)
    if path:
      self.checkpoint.restore(path).expect_partial()
    return path

  def save(self, step):
    faults.point("checkpoint_save:before")
    self.latest.save(checkpoint_number=step)
    faults.point("checkpoint_save:after")

  def save_best(self, step):
    self.best.save(checkpoint_number=step)
    faults.point("best_save:after")

  def cleanup(self):
    if self._scratch:
      shutil.rmtree(self._scratch, ignore_errors=True)
