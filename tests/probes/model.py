"""Probes of trainer.model under MirroredStrategy on logical CPU devices."""

import os

import keras
import numpy as np
from prelude import emit
from prelude import per_replica
import tensorflow as tf

from trainer import model as model_lib
from trainer import strategy as strategy_lib
from trainer.platform import devices as devices_lib


def cross_replica_batch_norm():
  """FusedBatchNormalization's moving statistics after one training step on
  $REPLICAS (1 or 2) mirrored replicas: two replicas see one half each of
  the batch one replica sees whole."""
  devices_lib.configure_devices(int(os.environ["REPLICAS"]))
  strategy = strategy_lib.get_strategy("mirrored").strategy
  rng = np.random.default_rng(0)
  # Deliberately different halves: the replicas' means differ by 4 std devs.
  halves = [
    rng.normal(0.0, 1.0, (4, 5, 5, 3)),
    rng.normal(4.0, 2.0, (4, 5, 5, 3)),
  ]
  halves = [h.astype(np.float32) for h in halves]
  with strategy.scope():
    layer = model_lib.FusedBatchNormalization(momentum=0.0)
    layer.build((None, 5, 5, 3))
  replicas = strategy.num_replicas_in_sync
  inputs = strategy.experimental_distribute_values_from_function(
    lambda ctx: (
      halves[ctx.replica_id_in_sync_group]
      if replicas == 2
      else np.concatenate(halves)
    )
  )
  strategy.run(tf.function(lambda x: layer(x, training=True)), args=(inputs,))
  emit(
    mean=per_replica(strategy, layer.moving_mean)[0].tolist(),
    variance=per_replica(strategy, layer.moving_variance)[0].tolist(),
    replicas_agree=all(
      np.array_equal(a, b)
      for v in (layer.moving_mean, layer.moving_variance)
      for a, b in zip(per_replica(strategy, v), per_replica(strategy, v)[1:])
    ),
  )


def dropout_per_replica():
  """The dropout masks two mirrored replicas draw, with tf.function or (with
  $XLA=1) compiled by XLA: the model's dropout6 and, as the control, Keras'
  own Dropout."""
  devices_lib.configure_devices(2)
  strategy = strategy_lib.get_strategy("mirrored").strategy
  with strategy.scope():
    model = model_lib.build_model("tiny", 1, 32, dropout_rate=0.5)
    builtin = keras.layers.Dropout(0.5, seed=1)  # The control: Keras' own.

  def masks_of(layer):
    def mask():
      return tf.cast(layer(tf.ones([4, 64]), training=True) > 0, tf.int32)

    def mask_compiled_by_xla():
      # XLA compiles for one device: each replica traces its own function on
      # its own device (a TPU compiles the whole replicated step at once).
      replica = tf.distribute.get_replica_context().replica_id_in_sync_group
      with tf.device(strategy.extended.worker_devices[replica]):
        return tf.function(mask, jit_compile=True)()

    masks = strategy.run(
      mask_compiled_by_xla if os.environ["XLA"] == "1" else tf.function(mask)
    )
    return [np.asarray(m) for m in strategy.experimental_local_results(masks)]

  first, second = masks_of(model.get_layer("dropout6"))
  emit(
    equal=bool(np.array_equal(first, second)),
    kept=float(first.mean()),
    builtin_equal=bool(np.array_equal(*masks_of(builtin))),
  )
