"""Optimizers and schedules: the fused Adam is Keras Adam; schedules match the seed."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import optimization


def _train(optimizer, steps=4):
  keras.utils.set_random_seed(0)
  model = keras.Sequential(
    [keras.Input((6,)), keras.layers.Dense(4), keras.layers.Dense(1)]
  )
  x = tf.constant(np.random.default_rng(0).normal(size=(16, 6)), tf.float32)
  y = tf.constant(np.random.default_rng(1).normal(size=(16, 1)), tf.float32)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean((model(x) - y) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))

  for _ in range(steps):
    step()
  return [w.numpy() for w in model.weights]


def test_fused_adam_matches_keras_adam():
  for fused_weights, plain_weights in zip(
    _train(optimization.FusedAdam(1e-2)), _train(keras.optimizers.Adam(1e-2))
  ):
    # Same formula; float32 rounding differs with the order of operations.
    np.testing.assert_allclose(
      fused_weights, plain_weights, rtol=1e-5, atol=1e-6
    )


def test_seed_schedule_is_the_notebooks_scheduler():
  schedule = optimization.EpochSchedule(
    "seed", 1e-3, steps_per_epoch=10, total_epochs=20, constant_epochs=10
  )
  # The seed: lr for epochs 0-9, then lr * exp(-0.1) applied each epoch.
  lr, expected = 1e-3, []
  for epoch in range(15):
    if epoch >= 10:
      lr *= math.exp(-0.1)
    expected.append(lr)
  got = [float(schedule(epoch * 10 + 5)) for epoch in range(15)]
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_cosine_with_warmup():
  schedule = optimization.EpochSchedule(
    "cosine", 0.1, steps_per_epoch=10, total_epochs=10, warmup_epochs=1
  )
  assert float(schedule(0)) == np.float32(0.01)
  assert float(schedule(9)) == np.float32(0.1)
  np.testing.assert_allclose(float(schedule(55)), 0.05, rtol=1e-5)
  assert float(schedule(100)) < 1e-8


@pytest.mark.multiprocess
def test_gradients_are_summed_across_replicas_in_the_chosen_dtype():
  import subprocess

  from conftest import REPO
  from conftest import cli_env
  from conftest import probe_command

  def updated(dtype):
    result = subprocess.run(
      probe_command("optimization:all_reduce", dtype),
      cwd=REPO,
      env=cli_env("/tmp"),
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return float(result.stdout.strip().splitlines()[-1])

  assert updated("float32") == -(2.0 + 2.0**-9)
  assert updated("bfloat16") == -2.0
