"""Probes of the training step: a float16 overflow on one replica or worker,
the workers' weight digests, and the TPU path's steps under XLA."""

import os

import numpy as np
from prelude import emit
from prelude import per_replica
from prelude import tiny
import tensorflow as tf

from trainer import data
from trainer import evaluation
from trainer import optimization
from trainer import train as train_lib
from trainer.loop import step as step_lib


class OverflowOnce(step_lib.TrainStep):
  """A step whose replica `replica` (of worker 1, or of the only process)
  gets an infinite gradient while the loss scale is at its initial value (so
  until the first skip): what a float16 overflow does to one replica."""

  replica = 0

  def apply_gradients(self, gradients):
    context = tf.distribute.get_replica_context()
    poisoned = tf.logical_and(
      self.optimizer.dynamic_scale == 2.0**15,
      tf.logical_and(
        context.replica_id_in_sync_group == self.replica,
        int(os.environ.get("WORKER_INDEX", "1")) == 1,
      ),
    )
    factor = tf.where(poisoned, np.float32(np.inf), np.float32(1.0))
    super().apply_gradients([g * factor for g in gradients])


def overflowing_trainer(config, replica):
  """A Trainer running OverflowOnce as its step."""
  trainer = train_lib.Trainer(config)
  trainer.step = OverflowOnce(
    trainer.config,
    trainer.strategy,
    trainer.model,
    trainer.optimizer,
    trainer.state,
  )
  trainer.step.replica = replica
  trainer.train_steps = trainer.step.make_call()
  return trainer


def weights(trainer):
  """{variable path: each replica's copy} of the trainable weights."""
  return {
    v.path: per_replica(trainer.strategy, v)
    for v in trainer.model.trainable_variables
  }


def compare(before, after):
  values = [x for replicas in after.values() for x in replicas]
  return {
    "finite": bool(all(np.all(np.isfinite(x)) for x in values)),
    "unchanged": bool(
      all(
        np.array_equal(a, b)
        for k in before
        for a, b in zip(before[k], after[k])
      )
    ),
    "replicas_equal": bool(
      all(np.array_equal(r[0], x) for r in after.values() for x in r)
    ),
  }


def mirrored_overflow():
  """Two mirrored replicas in mixed_float16, replica 1 overflowing: the
  overflowing step, then a clean one."""
  trainer = overflowing_trainer(
    tiny(
      strategy="mirrored",
      cpu_devices=2,
      precision="mixed_float16",
      global_batch_size=8,
    ),
    replica=1,
  )
  scale = lambda: float(trainer.optimizer.dynamic_scale.numpy())
  iterator = trainer.train_iterator(0, 0)
  control = train_lib.requests_vector()
  before, scale_before = weights(trainer), scale()
  trainer.train_steps(iterator, tf.constant(1), control)
  overflow_step = compare(before, weights(trainer))
  scale_after_overflow = scale()
  # A scale this small cannot overflow the tiny model's real gradients: the
  # clean step must apply (so the check above could have failed).
  trainer.optimizer.dynamic_scale.assign(16.0)
  before = weights(trainer)
  trainer.train_steps(iterator, tf.constant(1), control)
  emit(
    overflow_step=overflow_step,
    clean_step=compare(before, weights(trainer)),
    scale_before=scale_before,
    scale_after_overflow=scale_after_overflow,
    scale_after_clean=scale(),
  )


def multi_worker_overflow():
  """One epoch on two workers in mixed_float16, worker 1's replica
  overflowing once."""
  trainer = overflowing_trainer(
    tiny(
      strategy="multi_worker",
      precision="mixed_float16",
      global_batch_size=8,
      epochs=1,
      steps_per_epoch=4,
      collective_timeout_secs=60,
    ),
    replica=0,
  )
  summary = trainer.run()
  emit(
    digest=summary["weights_sha256"],
    status=summary["status"],
    scale=float(trainer.optimizer.dynamic_scale.numpy()),
    finite=compare(weights(trainer), weights(trainer))["finite"],
  )


def digest_of_trained_weights():
  """One epoch on two workers; the digest each prints. With $PERTURB=1 a
  worker shifts one kernel by 1e-3 on its own copy only, after the cluster
  synchronised the initial weights: a deliberately unsynchronised variable,
  which the digests must show."""
  trainer = train_lib.Trainer(
    tiny(
      strategy="multi_worker",
      epochs=1,
      steps_per_epoch=4,
      export=True,
      collective_timeout_secs=60,
    )
  )
  if os.environ.get("PERTURB") == "1":
    kernel = trainer.model.get_layer("predictions").kernel
    kernel.assign(kernel + 1e-3)
  summary = trainer.run()
  emit(digest=summary["weights_sha256"], status=summary["status"])


def xla_steps():
  """One replica's training and eval steps as the TPU path builds them, in
  $PRECISION with $DROPOUT, compiled by XLA (jit_compile=True) and not.

  Plain Adam (FusedAdam's kernel is CPU/GPU only), bfloat16 images and int32
  labels from the TPU input function, from the same weights each time. XLA
  draws other dropout masks than the CPU kernels from the same seed, so the
  comparison runs without dropout ($DROPOUT=0); a run with dropout shows
  that it compiles too.
  """
  trainer = train_lib.Trainer(
    tiny(
      strategy="one_device",
      precision=os.environ["PRECISION"],
      dropout_rate=float(os.environ["DROPOUT"]),
      global_batch_size=16,
    )
  )
  config, model, strategy = trainer.config, trainer.model, trainer.strategy
  with strategy.scope():
    trainer.optimizer = optimization.build_optimizer(
      config, trainer.schedule, loss_scaling=False, fused=False
    )
    trainer.optimizer.build(model.trainable_variables)
  trainer.step = step_lib.TrainStep(
    config, strategy, model, trainer.optimizer, trainer.state
  )
  context = tf.distribute.InputContext(1, 0, 1)
  train_batches = list(
    data.make_train_dataset(
      data.for_strategy(trainer.train_spec, "tpu"), context, 16
    ).take(2)
  )
  eval_batch = next(
    iter(
      data.make_eval_dataset(
        data.for_strategy(trainer.eval_spec, "tpu"), context, 16, steps=1
      )
    )
  )
  eval_step = evaluation.make_eval_step(
    model, config.num_classes, with_confusion=True
  )
  checkpoint = tf.train.Checkpoint(
    model=model, optimizer=trainer.optimizer, **trainer.state.trackables()
  )
  start = checkpoint.write(os.path.join(os.environ["MODEL_DIR"], "start"))

  def restore(lr_multiplier, bias_shift):
    checkpoint.read(start).assert_consumed()
    trainer.state.lr_multiplier.assign(lr_multiplier)
    bias = model.get_layer("predictions").bias
    bias.assign(bias + bias_shift)

  def run(jit_compile, lr_multiplier=1.0, bias_shift=0.0):
    def compiled(fn):
      return tf.function(fn, jit_compile=jit_compile)

    restore(lr_multiplier, bias_shift)
    stats = strategy.run(compiled(eval_step), args=eval_batch).numpy()
    evaluated = [float(stats[0] / stats[2]), float(stats[1]), float(stats[2])]
    gradients = strategy.run(
      compiled(
        lambda images, labels: trainer.step.compute_gradients(images, labels)[2]
      ),
      args=train_batches[0][:2],
    )
    restore(lr_multiplier, bias_shift)
    # Two steps: the second one's loss is computed with the first's update.
    train_step, losses = compiled(trainer.step.train_step), []
    for batch in train_batches:
      stats = strategy.run(train_step, args=batch).numpy()
      losses.append(float(stats[0] / stats[2]))
    return {
      "losses": losses,
      "eval": evaluated,
      "gradients": np.concatenate([np.ravel(g) for g in gradients]).tolist(),
    }

  if os.environ["DROPOUT"] != "0":
    emit(xla=run(True))
  else:
    emit(
      dtypes=[b.dtype.name for b in train_batches[0] + eval_batch],
      xla=run(True),
      plain=run(False),
      xla_double_rate=run(True, lr_multiplier=2.0),
      xla_shifted_bias=run(True, bias_shift=1.0),
    )
