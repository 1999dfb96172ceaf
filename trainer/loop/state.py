"""What a run must carry across a restart, as checkpointed variables, and
what every worker votes on at the end of a call of steps."""

import numpy as np
import tensorflow as tf

# What every worker votes on at the end of each call of steps (any worker's
# vote wins): stop (SIGTERM) and save (--checkpoint_every_secs).
REQUESTS = ("stop", "save")


def requests_vector(**votes):
  """The vector a call of training steps takes; names not given vote no."""
  unknown = set(votes) - set(REQUESTS)
  if unknown:
    raise ValueError(f"Unknown requests {sorted(unknown)}; expected {REQUESTS}")
  return tf.constant([float(bool(votes.get(name))) for name in REQUESTS])


def agreed_requests(summed):
  """{request: bool} from the vector the workers' votes were summed into."""
  return {name: float(v) > 0 for name, v in zip(REQUESTS, summed.numpy())}


class TrainState:
  """Progress that must survive a restart, as checkpointed variables."""

  def __init__(self, stats_size):
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.best_val_accuracy = tf.Variable(
      -1.0, dtype=tf.float64, trainable=False
    )
    self.best_monitor = tf.Variable(np.inf, dtype=tf.float64, trainable=False)
    self.epochs_without_improvement = tf.Variable(
      0, dtype=tf.int64, trainable=False
    )
    self.lr_multiplier = tf.Variable(1.0, dtype=tf.float32, trainable=False)
    self.rollbacks = tf.Variable(0, dtype=tf.int64, trainable=False)
    # --best_metric's best value so far, signed so that lower is better.
    self.best_metric_value = tf.Variable(
      np.inf, dtype=tf.float64, trainable=False
    )
    # The 'plateau' schedule: the rate's factor and --plateau_monitor's
    # history, decided from figures every worker computes identically.
    self.plateau_factor = tf.Variable(1.0, dtype=tf.float32, trainable=False)
    self.plateau_best = tf.Variable(np.inf, dtype=tf.float64, trainable=False)
    self.plateau_epochs_without_improvement = tf.Variable(
      0, dtype=tf.int64, trainable=False
    )
    # Steps' worth of this epoch's input that rollbacks consumed without
    # training on them: the input resumes after them, so a resumed run reads
    # the batches the uninterrupted one reads.
    self.rolled_back_steps_in_epoch = tf.Variable(
      0, dtype=tf.int64, trainable=False
    )
    # The current epoch's summed training statistics so far: a run resumed
    # mid-epoch reports (and early-stops on) the whole epoch, not only the
    # steps after the restart.
    self.epoch_totals = tf.Variable(
      tf.zeros([stats_size], tf.float64), trainable=False
    )

  def trackables(self):
    return {k: v for k, v in vars(self).items()}

  def position_in_epoch(self):
    """Steps' worth of this epoch's input consumed: trained or rolled back."""
    return int(self.step_in_epoch.numpy()) + int(
      self.rolled_back_steps_in_epoch.numpy()
    )
