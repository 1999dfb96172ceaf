"""*How* a call of training steps runs: each replica's forward and backward
pass, the update, and what a call returns (summed statistics, each step's
loss, the workers' agreed votes, whether everything stayed finite).

Several steps run in one `tf.function` call (`strategy.run` inside a loop):
fewer host round trips, which TPUs need most.
"""

import keras
import tensorflow as tf

from trainer import augment
from trainer import metrics


class TrainStep:
  """The compiled step of one run's model and optimizer."""

  def __init__(self, config, strategy, model, optimizer, state):
    self.config = config
    self.strategy = strategy
    self.model = model
    self.optimizer = optimizer
    self.state = state
    # Training statistics carry the count of records --skip_corrupt dropped.
    self.stats_layout = metrics.StatsLayout(
      config.num_classes, with_skipped=True
    )

  def compute_gradients(self, images, labels):
    """This replica's share of the step: (probabilities, per-example loss,
    gradients of the global-batch mean loss, loss-scaled under float16).
    `labels`: integer labels or soft targets (metrics.loss_per_example)."""
    config, model, optimizer = self.config, self.model, self.optimizer
    with tf.GradientTape() as tape:
      probabilities = model(images, training=True)
      per_example = metrics.loss_per_example(
        labels, probabilities, config.num_classes
      )
      # Average over the global batch: gradients are summed across replicas.
      loss = tf.nn.compute_average_loss(
        per_example, global_batch_size=config.global_batch_size
      )
      if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        loss = optimizer.scale_loss(loss)
    return (
      probabilities,
      per_example,
      tape.gradient(loss, model.trainable_variables),
    )

  def apply_gradients(self, gradients):
    """Sums `gradients` across replicas and updates the weights (replica
    context); under loss scaling every replica and worker takes one shared
    decision to apply or skip."""
    self.optimizer.apply_gradients(
      zip(gradients, self.model.trainable_variables)
    )

  def train_step(self, images, labels, skipped, step=None):
    """One replica's step (what TPUs compile with XLA): returns its batch
    statistics, laid out by `stats_layout`, to be summed over replicas.
    `step`: the global step this batch trains (seeds mixup/cutmix); None =
    the loop's current step."""
    step = self.state.step if step is None else step
    images, targets, labels = augment.training_batch(
      images, labels, self.config, step
    )
    probabilities, per_example, gradients = self.compute_gradients(
      images, targets
    )
    self.apply_gradients(gradients)
    return metrics.batch_stats(
      labels,
      probabilities,
      per_example,
      self.config.num_classes,
      skipped=skipped,
    )

  def _replicas_broken(self, checked):
    """How many replicas' copies of `checked` hold a NaN/Inf (summed over
    replicas and workers: every worker gets the same answer)."""
    strategy = self.strategy
    return strategy.reduce(
      "SUM",
      strategy.run(
        lambda: tf.cast(
          tf.logical_not(
            tf.reduce_all(
              [
                tf.reduce_all(tf.math.is_finite(tf.cast(w, tf.float32)))
                for w in checked
              ]
            )
          ),
          tf.float32,
        )
      ),
      axis=None,
    )

  def make_call(self):
    """The compiled call: (iterator, num_steps, votes) -> (summed
    statistics, each step's loss, agreed votes, everything finite)."""
    size = self.stats_layout.size
    strategy = self.strategy
    # What a checkpoint saves and must never hold as NaN/Inf: the weights
    # and every floating-point optimizer variable (an Adam second moment can
    # overflow while the weights are still finite).
    checked = [
      *self.model.weights,
      *(
        v for v in self.optimizer.variables if tf.as_dtype(v.dtype).is_floating
      ),
    ]

    @tf.function
    def train_call(iterator, num_steps, control):
      totals = tf.zeros([size], tf.float32)
      step_losses = tf.TensorArray(tf.float32, size=num_steps)
      for i in tf.range(num_steps):
        images, labels, skipped = next(iterator)
        step = self.state.step + tf.cast(i, tf.int64)
        stats = strategy.reduce(
          "SUM",
          strategy.run(self.train_step, args=(images, labels, skipped, step)),
          axis=None,
        )
        totals += stats
        sums = stats[
          self.stats_layout.slices["sums"]
        ]  # loss sum, correct, count
        step_losses = step_losses.write(i, sums[0] / sums[2])
      # Agree on stop/save across workers: any worker's request counts.
      agreed = strategy.reduce(
        "SUM", strategy.run(lambda: tf.identity(control)), axis=None
      )
      # The last update can break the weights or the optimizer's state
      # while every loss was finite: such state must never reach a
      # checkpoint. Each replica checks its own copy on its device; all
      # agree on the answer.
      broken = self._replicas_broken(checked)
      return totals, step_losses.stack(), agreed, tf.equal(broken, 0.0)

    return train_call
