"""Pins what the seed README and the paper fix: parameter counts, shapes, dtypes."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import model as model_lib

# The seed README's stated total (its all-'valid' network).
SEED_PARAMS = 21_586_689
# The seed's code listing, conv2-conv5 padded 'same'.
SEED_SAME_PARAMS = 46_752_513
# Krizhevsky et al. 2012, one tower, 1000 classes.
ORIGINAL_PARAMS = 62_378_344
# The narrow test variant (as the README's table states).
TINY_PARAMS = 24_609


@pytest.mark.parametrize(
  "name,num_classes,expected",
  [
    ("seed", 1, SEED_PARAMS),
    ("seed_same", 1, SEED_SAME_PARAMS),
    ("original", 1000, ORIGINAL_PARAMS),
    ("tiny", 1, TINY_PARAMS),
  ],
)
def test_parameter_counts(name, num_classes, expected):
  assert model_lib.build_model(name, num_classes).count_params() == expected


def test_original_at_224_padded_equals_227():
  # The paper's 227 input; the classic "224" figure only works padded.
  assert model_lib.build_model("original", 1000).input_shape == (
    None,
    227,
    227,
    3,
  )


def test_seed_flops_match_analysis():
  model = model_lib.build_model("seed", 1)
  # 535 M multiply-adds forward; about 3.0 GFLOP per training image.
  assert model_lib.forward_flops_per_image(model) == 2 * 535_370_880
  assert 2.9e9 < model_lib.training_flops_per_image(model) < 3.1e9


@pytest.mark.parametrize("num_classes,shape", [(1, (2, 1)), (5, (2, 5))])
def test_output_shape_and_normalisation(num_classes, shape):
  model = model_lib.build_model("tiny", num_classes, 32)
  out = model(np.full((2, 32, 32, 3), 255, np.uint8)).numpy()
  assert out.shape == shape
  if num_classes > 1:
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
  else:
    assert np.all((out > 0) & (out < 1))


def test_mixed_precision_keeps_output_float32():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model = model_lib.build_model("tiny", 1, 32)
    assert model.get_layer("conv1").compute_dtype == "bfloat16"
    assert model.get_layer("predictions").compute_dtype == "float32"
    assert model(np.zeros((1, 32, 32, 3), np.uint8)).dtype == tf.float32
  finally:
    keras.mixed_precision.set_global_policy("float32")


def test_image_too_small_is_a_clear_error():
  with pytest.raises(ValueError, match="image_size=64 is too small"):
    model_lib.build_model("seed", 1, 64)


def test_unknown_model_lists_valid_names():
  with pytest.raises(ValueError, match="seed_same"):
    model_lib.build_model("vgg", 1)


def test_lrn_matches_paper_formula():
  layer = model_lib.LocalResponseNormalization()
  x = np.random.default_rng(0).normal(size=(1, 1, 1, 8)).astype(np.float32)
  got = layer(x).numpy()[0, 0, 0]
  a = x[0, 0, 0]
  want = [
    a[i] / (2 + 1e-4 * np.sum(a[max(0, i - 2) : i + 3] ** 2)) ** 0.75
    for i in range(8)
  ]
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_full_size_seed_training_step_reduces_loss():
  """One full-size 224x224 seed model, a few steps on one repeated batch."""
  keras.utils.set_random_seed(0)
  model = model_lib.build_model("seed", 1)
  optimizer = keras.optimizers.Adam(1e-4)
  images = tf.constant(
    np.random.default_rng(0).integers(0, 255, (4, 224, 224, 3)), tf.uint8
  )
  labels = tf.constant([[0.0], [1.0], [0.0], [1.0]])

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(
        keras.losses.binary_crossentropy(labels, model(images, training=True))
      )
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  first = float(step())
  for _ in range(4):
    last = float(step())
  assert np.isfinite(first) and last < first


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_fused_batch_norm_matches_keras(dtype):
  keras.mixed_precision.set_global_policy(dtype)
  try:
    x = (
      np.random.default_rng(0).normal(2.0, 3.0, (8, 6, 6, 5)).astype(np.float32)
    )
    fused = model_lib.FusedBatchNormalization(momentum=0.9)
    plain = keras.layers.BatchNormalization(momentum=0.9)
    for layer in (fused, plain):
      layer.build(x.shape)
      layer.gamma.assign(np.linspace(0.5, 1.5, 5))
      layer.beta.assign(np.linspace(-1, 1, 5))
    tolerance = 1e-5 if dtype == "float32" else 3e-2
    # As float32: the numpy 1.26 of TF 2.17 cannot compare bfloat16 arrays.
    as_float = lambda outputs: tf.cast(outputs, tf.float32)
    np.testing.assert_allclose(
      as_float(fused(x, training=True)),
      as_float(plain(x, training=True)),
      atol=tolerance,
      rtol=tolerance,
    )
    for name in ("moving_mean", "moving_variance"):
      np.testing.assert_allclose(
        getattr(fused, name).numpy(), getattr(plain, name).numpy(), rtol=1e-5
      )
    np.testing.assert_allclose(
      as_float(fused(x, training=False)),
      as_float(plain(x, training=False)),
      atol=tolerance,
      rtol=tolerance,
    )
  finally:
    keras.mixed_precision.set_global_policy("float32")


def test_portable_copy_has_only_builtin_layers_and_same_outputs():
  model = model_lib.build_model("tiny", 1, 32)
  copy = model_lib.portable_copy(model, "tiny", 1, 32, 0.5)
  assert not any(
    isinstance(l, model_lib.FusedBatchNormalization) for l in copy.layers
  )
  x = np.random.default_rng(1).integers(0, 255, (2, 32, 32, 3)).astype(np.uint8)
  np.testing.assert_allclose(copy(x), model(x), rtol=1e-6)


@pytest.mark.multiprocess
def test_cross_replica_batch_norm_statistics_are_the_global_batchs(
  cache_dir, tmp_path
):
  from conftest import run_probe

  probe = "model:cross_replica_batch_norm"
  one = run_probe(probe, cache_dir, tmp_path, REPLICAS="1")
  two = run_probe(probe, cache_dir, tmp_path, REPLICAS="2")
  assert two["replicas_agree"]
  np.testing.assert_allclose(two["mean"], one["mean"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(two["variance"], one["variance"], rtol=1e-5)


@pytest.mark.multiprocess
@pytest.mark.parametrize("xla", ["0", "1"])
def test_replicas_draw_different_dropout_masks(cache_dir, tmp_path, xla):
  from conftest import run_probe

  got = run_probe("model:dropout_per_replica", cache_dir, tmp_path, XLA=xla)
  assert got["builtin_equal"], got  # What ReplicaDropout exists to avoid.
  assert not got["equal"], got
  assert 0.3 < got["kept"] < 0.7, got


def test_the_saved_model_stores_each_weight_once(tmp_path):
  """The export's SavedModel holds the model's weights once (ExportArchive
  saves the variables its endpoints use; tracking the model as well stored
  them a second time: 499 MB for `original`'s 250 MB of weights)."""
  from trainer import outputs
  from trainer import serving

  model = model_lib.build_model("tiny", num_classes=3, image_size=32)
  run_dir = outputs.RunDir.for_training(str(tmp_path), "tiny")
  serving.export(model, run_dir, 32, "resize", ["a", "b", "c"])
  stored = tf.train.list_variables(
    os.path.join(run_dir.saved_model, "variables", "variables")
  )
  values = sum(
    int(np.prod(shape)) for name, shape in stored if "OBJECT_GRAPH" not in name
  )
  assert values == model.count_params(), (values, model.count_params())
