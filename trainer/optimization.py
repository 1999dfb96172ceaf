"""Optimizers and learning-rate schedules.

Schedules are pure functions of the optimizer step, so restoring the
optimizer from a checkpoint restores the learning-rate position too.
"""

import contextlib
import math

import keras
import tensorflow as tf


class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """Warmup, then 'constant', 'seed', 'cosine', 'step' or 'plateau', times a
  rollback multiplier.

  'seed' is the seed notebook's LearningRateScheduler: the peak rate for
  `constant_epochs` epochs, then x exp(-0.1) per further epoch. 'step' is
  the peak rate x 0.1 per boundary epoch reached. 'plateau' is the peak rate
  times `plateau_factor`, a variable the training loop lowers at epoch ends
  (so the rate is still a function of the step and the checkpointed state).
  """

  def __init__(
    self,
    kind,
    peak,
    steps_per_epoch,
    total_epochs,
    constant_epochs=10,
    warmup_epochs=0.0,
    multiplier=None,
    boundaries=(),
    plateau_factor=None,
  ):
    self.kind = kind
    self.peak = peak
    self.steps_per_epoch = steps_per_epoch
    self.total_steps = steps_per_epoch * total_epochs
    self.constant_epochs = constant_epochs
    self.warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    # A variable owned by the training state (lowered on NaN rollback).
    self.multiplier = multiplier
    self.boundaries = tuple(boundaries)
    self.plateau_factor = plateau_factor

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    if self.kind == "constant":
      rate = tf.constant(self.peak, tf.float32)
    elif self.kind == "seed":
      epoch = tf.floor(step / self.steps_per_epoch)
      decay_epochs = tf.maximum(0.0, epoch - self.constant_epochs + 1)
      rate = self.peak * tf.exp(-0.1 * decay_epochs)
    elif self.kind == "step":
      epoch = tf.floor(step / self.steps_per_epoch)
      passed = tf.add_n(
        [tf.cast(epoch >= b, tf.float32) for b in self.boundaries] or [0.0]
      )
      rate = self.peak * tf.pow(0.1, passed)
    elif self.kind == "plateau":
      rate = self.peak * tf.cast(self.plateau_factor, tf.float32)
    else:  # cosine over the steps after warmup
      progress = (step - self.warmup_steps) / max(
        1, self.total_steps - self.warmup_steps
      )
      progress = tf.clip_by_value(progress, 0.0, 1.0)
      rate = self.peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
    if self.warmup_steps:
      warmup = self.peak * (step + 1) / self.warmup_steps
      rate = tf.where(step < self.warmup_steps, warmup, rate)
    if self.multiplier is not None:
      rate = rate * tf.cast(self.multiplier, tf.float32)
    return rate

  def get_config(self):
    return {
      "kind": self.kind,
      "peak": self.peak,
      "steps_per_epoch": self.steps_per_epoch,
      "constant_epochs": self.constant_epochs,
      "warmup_steps": self.warmup_steps,
      "boundaries": list(self.boundaries),
    }


class _AllReduceIn:
  """Optimizer mixin: sum gradients across replicas, in `all_reduce_dtype`.

  The sum happens here, in the replica context, on every supported Keras:
  Keras before 3.5 sums inside a merge_call, where there is no replica
  context, so under MirroredStrategy with a non-NCCL reduction (CPU
  devices) each replica applied only its own gradient (keras-team/keras
  #19308). Keras' own sum is switched off, so gradients are summed once.
  A narrower dtype halves the bytes every multi-worker step sends; the sum
  comes back in the gradient's dtype before the update.
  """

  all_reduce_dtype = None

  def apply(self, grads, trainable_variables=None):
    replica_context = tf.distribute.get_replica_context()
    if tf.distribute.has_strategy() and replica_context is not None:
      grads = list(grads)
      present = [i for i, g in enumerate(grads) if g is not None]
      narrow = [
        grads[i]
        if self.all_reduce_dtype is None
        else tf.cast(grads[i], self.all_reduce_dtype)
        for i in present
      ]
      summed = replica_context.all_reduce("sum", narrow)
      for i, value in zip(present, summed):
        grads[i] = tf.cast(value, grads[i].dtype)
    return super().apply(grads, trainable_variables)

  def _all_reduce_sum_gradients(self, grads_and_vars):
    return grads_and_vars  # Summed in `apply`.


class SGD(_AllReduceIn, keras.optimizers.SGD):
  """Keras SGD that can all-reduce in a narrower dtype."""


class FusedAdam(_AllReduceIn, keras.optimizers.Adam):
  """Keras Adam whose per-variable update is TensorFlow's fused kernel.

  ResourceApplyAdam does Keras' arithmetic (same bias correction, same
  epsilon placement) in one pass over each variable instead of about a
  dozen elementwise ops: ~50 ms less per seed-model step on a 2-core CPU.
  Under tf.distribute it runs inside `extended.update`, where each mirrored
  variable's `.handle` is the local copy's. With amsgrad, or fused=False
  (TPU), it is plain Keras Adam.
  """

  def __init__(self, *args, fused=True, **kwargs):
    super().__init__(*args, **kwargs)
    self.fused = fused

  def _slots(self, variable):
    """(first moment, second moment) of `variable`: Keras 3.4-3.15 keep them
    in the private lists `_momentums` and `_velocities` (else: plain Adam)."""
    index = self._get_variable_index(variable)
    return self._momentums[index], self._velocities[index]

  def update_step(self, gradient, variable, learning_rate):
    if (
      not self.fused
      or self.amsgrad
      or isinstance(gradient, tf.IndexedSlices)
      or not hasattr(self, "_momentums")
    ):
      return super().update_step(gradient, variable, learning_rate)
    m, v = self._slots(variable)
    dtype = variable.dtype
    step = tf.cast(self.iterations + 1, dtype)
    tf.raw_ops.ResourceApplyAdam(
      var=variable.handle,
      m=m.value.handle,
      v=v.value.handle,
      beta1_power=tf.pow(tf.cast(self.beta_1, dtype), step),
      beta2_power=tf.pow(tf.cast(self.beta_2, dtype), step),
      lr=tf.cast(learning_rate, dtype),
      beta1=tf.cast(self.beta_1, dtype),
      beta2=tf.cast(self.beta_2, dtype),
      epsilon=tf.cast(self.epsilon, dtype),
      grad=tf.cast(gradient, dtype),
    )


class LossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
  """Keras' dynamic loss scaling with one decision for the whole cluster.

  Keras decides "the gradients are finite" from each replica's own
  gradients, before they are summed: when one replica overflows, the others
  still apply (their weights go to inf with the summed gradient) and, across
  workers, some enter the gradient all-reduce while others skip it - a
  collective mismatch that hangs. Here the decision is all-reduced first, so
  every replica and worker applies the step, or skips it and halves the
  scale, together. It is taken on the same information as the finiteness of
  the summed gradient: a sum is finite iff every replica's part is.
  """

  def check_finite(self, grads):
    finite = super().check_finite(grads)
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
      return finite
    overflowed = context.all_reduce(
      tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite), tf.float32)
    )
    return tf.equal(overflowed, 0.0)


def step_counter(optimizer):
  """The variable counting the optimizer's steps (what drives the schedule).

  A LossScaleOptimizer's own `iterations` is not it on every supported
  Keras (3.4 keeps a separate, unused counter): it is the inner one's.
  """
  return getattr(optimizer, "inner_optimizer", optimizer).iterations


def last_update_rate(schedule, optimizer):
  """The learning rate the last update used (the optimizer's count drives
  the schedule; float16 loss scaling does not count skipped steps)."""
  return float(schedule(max(0, int(step_counter(optimizer).numpy()) - 1)))


def build_optimizer(
  config, schedule, loss_scaling, fused=True, all_reduce_dtype="float32"
):
  """Adam (the seed) or SGD with momentum (the paper), optionally loss-scaled.

  all_reduce_dtype: the dtype gradients are summed across replicas in.
  """
  weight_decay = config.weight_decay or None
  regularisation = {}
  if config.clip_norm:
    # Keras clips inside `apply`: after `_AllReduceIn` summed the replicas'
    # gradients and after LossScaleOptimizer unscaled them (Keras 3.4-3.15),
    # so every replica clips the same, true gradient.
    regularisation["global_clipnorm"] = config.clip_norm
  if config.ema_decay:
    regularisation.update(use_ema=True, ema_momentum=config.ema_decay)
  if config.optimizer == "adam":
    optimizer = FusedAdam(
      schedule, weight_decay=weight_decay, fused=fused, **regularisation
    )
  else:
    optimizer = SGD(
      schedule,
      momentum=config.momentum,
      weight_decay=weight_decay,
      **regularisation,
    )
  if all_reduce_dtype != "float32":
    optimizer.all_reduce_dtype = tf.as_dtype(all_reduce_dtype)
  if loss_scaling:
    # float16 gradients underflow without it; bfloat16 has float32's range.
    optimizer = LossScaleOptimizer(optimizer)
  return optimizer


def weight_averages(optimizer):
  """The moving averages of the trainable weights (--ema_decay), in the order
  the optimizer was built with; None when averaging is off.

  Keras keeps them as optimizer variables (so checkpoints hold them) and
  updates them in `apply`, in the replica context, after the weights: each
  replica averages its own copy of the weights, which are the same on every
  replica, so the averages are too, with no extra communication.
  """
  inner = getattr(optimizer, "inner_optimizer", optimizer)
  if not inner.use_ema:
    return None
  # Keras 3.4-3.15 keep them in this private list, built in `build`.
  return inner._model_variables_moving_average


def _copy_values(average, weight):
  average.assign(weight.read_value())


def _swap_values(weight, average):
  held = weight.read_value()
  weight.assign(average)
  average.assign(held)


class AveragedWeights:
  """Swaps the moving averages into the model's weights and back, in place.

  A swap exchanges the two values on every device (no copy on the host, no
  communication): swapping twice restores both bit for bit, so training
  goes on from the raw weights after evaluating or saving the averaged ones.
  Without --ema_decay `swapped_in` does nothing.
  """

  def __init__(self, strategy, optimizer, weights):
    """weights: the trainable weights the optimizer was built with."""
    averages = weight_averages(optimizer)
    self._strategy = strategy
    self._pairs = (
      []
      if averages is None
      else [(w.value, a.value) for w, a in zip(weights, averages)]
    )
    self._swap = tf.function(self._swap_all) if self._pairs else None
    self._copy = tf.function(self._copy_all) if self._pairs else None

  def start_from_weights(self):
    """Sets every average to its weight, on every device. Keras creates the
    averages as zeros and fills them at the first update, so a checkpoint
    saved before any update would otherwise hold zeros."""
    if self._swap is None:
      return
    with self._strategy.scope():
      self._copy()

  def _copy_all(self):
    for weight, average in self._pairs:
      self._strategy.extended.update(
        average, _copy_values, args=(weight,), group=False
      )

  def _swap_all(self):
    for weight, average in self._pairs:
      self._strategy.extended.update(
        weight, _swap_values, args=(average,), group=False
      )

  @contextlib.contextmanager
  def swapped_in(self):
    """The model holds the averaged weights inside the `with` block."""
    if self._swap is None:
      yield
      return
    with self._strategy.scope():
      self._swap()
    try:
      yield
    finally:
      with self._strategy.scope():
        self._swap()
