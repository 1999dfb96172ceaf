"""Probes of gradient clipping (--clip_norm) and weight averaging
(--ema_decay): one device, two mirrored replicas, two workers."""

import hashlib
import os

import keras
import numpy as np
from prelude import emit
from prelude import per_replica
from prelude import tiny
import tensorflow as tf

from trainer import evaluation
from trainer import model as model_lib
from trainer import optimization
from trainer import outputs
from trainer import train as train_lib


def local(strategy, variable):
  """Each replica's copy of a Keras variable (or a tf.Variable)."""
  return per_replica(strategy, getattr(variable, "value", variable))


def replicas_equal(strategy, variables):
  return all(
    np.array_equal(copies[0], c)
    for copies in (local(strategy, v) for v in variables)
    for c in copies
  )


def relative(a, b):
  """The relative L2 distance of two lists of arrays, taken as one vector."""
  a, b = (np.concatenate([np.ravel(x) for x in v]) for v in (a, b))
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def check_averages(trainer, decay, history, result):
  """Three more steps, one per call, then emits `result` with the averages
  after them against numpy's, from the weights after each step (Keras' rule:
  the first step's weights, then decay x average + (1 - decay) x weights).

  Args:
    trainer: a Trainer built with ema_decay=decay.
    decay: its --ema_decay.
    history: the weights after the steps so far (one list per step).
    result: what the probe found so far.
  """
  strategy = trainer.strategy
  variables = trainer.model.trainable_variables
  averages = optimization.weight_averages(trainer.optimizer)
  iterator = trainer.train_iterator(0, 1)
  for _ in range(3):
    trainer.train_steps(iterator, tf.constant(1), train_lib.requests_vector())
    history.append([local(strategy, v)[0] for v in variables])

  def ema(rate):
    average = history[0]
    for weights in history[1:]:
      average = [rate * a + (1 - rate) * w for a, w in zip(average, weights)]
    return average

  got = [local(strategy, a)[0] for a in averages]
  result.update(
    ema_replicas=len(local(strategy, averages[0])),
    ema_error=relative(got, ema(decay)),
    ema_error_other_decay=relative(got, ema(0.8)),
    ema_error_raw=relative(got, history[-1]),
    ema_replicas_equal=replicas_equal(strategy, averages),
  )
  if len(local(strategy, averages[0])) > 1:
    # The control: one replica's copy planted off by 1e-3.
    strategy.experimental_local_results(averages[0].value)[1].assign_add(
      tf.fill(averages[0].shape, 1e-3)
    )
    result["ema_replicas_equal_planted"] = replicas_equal(strategy, averages)
  emit(**result)


def clip():
  """One clipped step on two mirrored replicas in $PRECISION, then the
  averages (check_averages).

  The replicas see different halves of one batch; the probe computes each
  replica's gradient, then takes the real step from the same weights, and
  compares the update with what the clipped sum (and the alternatives that
  would be wrong) give. Plain SGD: update = -learning_rate x gradient.
  """
  clip_norm, learning_rate, decay = 0.05, 1.0, 0.9
  trainer = train_lib.Trainer(
    tiny(
      strategy="mirrored",
      cpu_devices=2,
      precision=os.environ["PRECISION"],
      optimizer="sgd",
      momentum=0.0,
      learning_rate=learning_rate,
      lr_schedule="constant",
      dropout_rate=0.0,
      global_batch_size=16,
      deterministic=True,
      clip_norm=clip_norm,
      ema_decay=decay,
    )
  )
  strategy, model, optimizer = (
    trainer.strategy,
    trainer.model,
    trainer.optimizer,
  )
  variables = model.trainable_variables
  images, labels, skipped = next(trainer.train_iterator(0, 0))
  scale = 1.0
  if hasattr(optimizer, "dynamic_scale"):
    # Small enough that no float16 gradient overflows (the step would be
    # skipped), large enough that clipping scaled gradients would show.
    optimizer.dynamic_scale.assign(256.0)
    scale = float(optimizer.dynamic_scale.numpy())
  gradients = tf.function(
    lambda i, l: strategy.run(
      lambda i, l: trainer.step.compute_gradients(i, l)[2], args=(i, l)
    )
  )(images, labels)
  # [replica][variable], unscaled.
  parts = [
    [np.asarray(x) / scale for x in copies]
    for copies in zip(
      *[strategy.experimental_local_results(g) for g in gradients]
    )
  ]
  before = [local(strategy, v)[0] for v in variables]
  tf.function(
    lambda: strategy.run(
      trainer.step.train_step, args=(images, labels, skipped)
    )
  )()
  update = [local(strategy, v)[0] - b for v, b in zip(variables, before)]

  def norm(arrays):
    return float(
      np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in arrays))
    )

  def clipped(arrays):
    return [a * min(1.0, clip_norm / norm(arrays)) for a in arrays]

  summed = [a + b for a, b in zip(*parts)]
  expected = [-learning_rate * g for g in clipped(summed)]
  per_replica_clipped = [
    -learning_rate * (a + b)
    for a, b in zip(clipped(parts[0]), clipped(parts[1]))
  ]
  unclipped = [-learning_rate * g for g in summed]
  history = [[local(strategy, v)[0] for v in variables]]
  halves = [np.asarray(x) for x in strategy.experimental_local_results(images)]
  result = dict(
    scale=scale,
    norms=[norm(summed), norm(parts[0]), norm(parts[1])],
    different_data=not np.array_equal(*halves),
    error=relative(update, expected),
    error_if_per_replica=relative(update, per_replica_clipped),
    error_if_unclipped=relative(update, unclipped),
    replicas_equal=replicas_equal(strategy, variables),
  )
  check_averages(trainer, decay, history, result)


def ema_steps():
  """One step on one device, then the averages (check_averages)."""
  decay = 0.9
  trainer = train_lib.Trainer(
    tiny(strategy="one_device", global_batch_size=16, ema_decay=decay)
  )
  trainer.train_steps(
    trainer.train_iterator(0, 0), tf.constant(1), train_lib.requests_vector()
  )
  history = [
    [local(trainer.strategy, v)[0] for v in trainer.model.trainable_variables]
  ]
  check_averages(trainer, decay, history, {})


def ema_outputs():
  """One epoch with validation and export; then which weights each of them
  used: the averages or the raw ones."""
  trainer = train_lib.Trainer(
    tiny(
      epochs=1,
      steps_per_epoch=4,
      export=True,
      strategy="one_device",
      ema_decay=0.9,
    )
  )
  summary = trainer.run()
  strategy, model = trainer.strategy, trainer.model
  exported = keras.models.load_model(
    trainer.run_dir.keras_model,
    custom_objects={
      "LocalResponseNormalization": model_lib.LocalResponseNormalization
    },
  )
  # The latest checkpoint: the raw weights and the average, as training left them.
  trainer.checkpoints.restore_latest()
  raw = [np.asarray(v) for v in model.trainable_variables]
  average = [
    np.asarray(a) for a in optimization.weight_averages(trainer.optimizer)
  ]
  export = [np.asarray(v) for v in exported.trainable_variables]
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(a, b))
  recorded = outputs.read_metrics(trainer.model_dir)[-1]["val_loss"]
  evaluated = trainer.evaluate()["loss"]
  raw_after_evaluate = [np.asarray(v) for v in model.trainable_variables]
  raw_evaluated = evaluation.evaluate(
    strategy,
    trainer.num_pipelines,
    trainer._eval_call,
    trainer.eval_spec,
    trainer.config.global_batch_size,
  )["loss"]
  trainer.checkpoints.restore_best()
  best = [np.asarray(v) for v in model.trainable_variables]
  emit(
    status=summary["status"],
    shapes_match=[a.shape for a in average] == [e.shape for e in export],
    export_is_average=same(export, average),
    export_is_raw=same(export, raw),
    best_is_average=same(best, average),
    best_is_raw=same(best, raw),
    recorded=recorded,
    evaluated=evaluated,
    raw_evaluated=raw_evaluated,
    raw_kept=same(raw_after_evaluate, raw),
  )


def ema_workers():
  """One epoch on each of two workers; the digest of each one's averages.
  Worker 1 then plants a difference in its average: the digest must see it
  (the negative control of the equality)."""
  trainer = train_lib.Trainer(
    tiny(
      strategy="multi_worker",
      epochs=1,
      steps_per_epoch=4,
      ema_decay=0.9,
      collective_timeout_secs=60,
    )
  )
  summary = trainer.run()
  averages = optimization.weight_averages(trainer.optimizer)

  def digest():
    h = hashlib.sha256()
    for a in averages:
      h.update(np.asarray(a).tobytes())
    return h.hexdigest()

  clean = digest()
  if os.environ["WORKER_INDEX"] == "1":
    averages[0].assign(averages[0] + 1e-3)
  emit(
    status=summary["status"],
    weights=summary["weights_sha256"],
    average=clean,
    planted=digest(),
  )
