"""AlexNet variants, pure Keras.

This module knows nothing about strategies or devices: `build_model` is called
inside `strategy.scope()` by the training loop, and the mixed-precision policy
is set globally before it is called.

Variants (parameter counts pinned in tests/model_test.py):

* `seed`: the seed notebook's BatchNorm AlexNet, all convolutions `valid`,
  224x224x3 in, one sigmoid unit out: 21,586,689 parameters (the total the
  seed's model summary states).
* `seed_same`: the seed's code listing, conv2-conv5 padded `same`:
  46,752,513 parameters with one output unit.
* `original`: Krizhevsky et al. 2012 as one tower: LRN after conv1 and conv2,
  overlapping pooling, 227x227 input, 1000 classes: 62,378,344 parameters.
* `tiny`: the same layer pattern, narrow, for fast tests on small images.

Every model takes uint8-range pixels (0..255, any dtype) and normalises on the
device, so the host pipeline can ship uint8 (4x less memory traffic).
"""

import hashlib

import keras
import tensorflow as tf

from trainer.config import MODEL_IMAGE_SIZES
from trainer.config import MODELS as MODEL_NAMES


@keras.saving.register_keras_serializable(package="alexnet_tf")
class LocalResponseNormalization(keras.layers.Layer):
  """Krizhevsky's cross-channel LRN (k=2, n=5, alpha=1e-4, beta=0.75).

  Computed in float32: it divides by a power of a sum of squares, which loses
  too much in bfloat16/float16.
  """

  def __init__(self, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75, **kwargs):
    super().__init__(**kwargs)
    self.depth_radius = depth_radius
    self.bias = bias
    self.alpha = alpha
    self.beta = beta

  def call(self, inputs):
    normalized = tf.nn.local_response_normalization(
      tf.cast(inputs, tf.float32),
      depth_radius=self.depth_radius,
      bias=self.bias,
      alpha=self.alpha,
      beta=self.beta,
    )
    return tf.cast(normalized, inputs.dtype)

  def get_config(self):
    return {
      **super().get_config(),
      "depth_radius": self.depth_radius,
      "bias": self.bias,
      "alpha": self.alpha,
      "beta": self.beta,
    }


@keras.saving.register_keras_serializable(package="alexnet_tf")
class FusedBatchNormalization(keras.layers.BatchNormalization):
  """Keras BatchNormalization whose training step is one fused kernel.

  Same variables, same moving-average update and the same result as the
  Keras layer on one replica (which normalises with several separate ops, 4x
  slower on a CPU in bfloat16: 224 vs 51 ms per step for the seed's bn1 at
  batch 128). With several replicas each normalises with its own batch's
  moments (as unsynchronised BatchNorm does), and the moving statistics are
  updated with the global batch's moments (all-reduced), so every replica
  and worker holds the same moving statistics, equal to one device's on the
  whole batch. Falls back to the Keras
  implementation for masks, other ranks and axes. Export swaps it for the
  built-in layer (see `portable_copy`).
  """

  def call(self, inputs, training=None, mask=None):
    if (
      not training
      or not self.trainable
      or self.synchronized
      or mask is not None
      or len(inputs.shape) != 4
      or self.axis not in (-1, 3)
    ):
      return super().call(inputs, training=training, mask=mask)
    scale = self.gamma if self.scale else tf.ones([inputs.shape[-1]])
    offset = self.beta if self.center else tf.zeros([inputs.shape[-1]])
    dtype = (
      inputs.dtype
      if inputs.dtype in (tf.float32, tf.bfloat16, tf.float16)
      else tf.float32
    )
    outputs, mean, unbiased_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
      x=tf.cast(inputs, dtype),
      scale=tf.cast(scale, tf.float32),
      offset=tf.cast(offset, tf.float32),
      mean=tf.zeros([0]),
      variance=tf.zeros([0]),
      epsilon=self.epsilon,
      is_training=True,
    )
    # The fused op reports the Bessel-corrected variance; Keras averages the
    # biased one into moving_variance.
    count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32)
    variance = unbiased_variance * (count - 1.0) / count
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
      # The global batch's moments (every replica holds the same number of
      # examples): average each replica's mean and mean square, then
      # variance = E[x^2] - E[x]^2. Averaging per-replica variances would
      # drop the spread of the replicas' means and always under-estimate.
      # Moments are taken about moving_mean (the same on every replica) so
      # the subtraction keeps float32's precision when |mean| >> std.
      center = tf.cast(self.moving_mean, tf.float32)
      offset, mean_square = context.all_reduce(
        "MEAN", [mean - center, variance + tf.square(mean - center)]
      )
      mean = center + offset
      variance = tf.maximum(mean_square - tf.square(offset), 0.0)
    momentum = self.momentum
    self.moving_mean.assign(
      self.moving_mean * momentum + mean * (1.0 - momentum)
    )
    self.moving_variance.assign(
      self.moving_variance * momentum + variance * (1.0 - momentum)
    )
    return tf.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package="alexnet_tf")
class ReplicaDropout(keras.layers.Dropout):
  """Keras Dropout whose masks differ between replicas.

  Keras draws masks from a seed-generator variable that is mirrored, so
  every replica would drop the same units of its (different) examples; the
  replica's index is folded into the seed. Same mask distribution, same
  checkpointed state (one generator), reproducible under --deterministic.
  Export swaps it for the built-in layer (see `portable_copy`).
  """

  def call(self, inputs, training=False):
    context = tf.distribute.get_replica_context()
    if (
      not training
      or self.rate == 0
      or self.noise_shape is not None
      or context is None
      or context.num_replicas_in_sync == 1
    ):
      return super().call(inputs, training=training)
    seed = tf.cast(self.seed_generator.next(), tf.int64)
    seed = tf.random.experimental.stateless_fold_in(
      seed, tf.cast(context.replica_id_in_sync_group, tf.int64)
    )
    keep = tf.random.stateless_uniform(tf.shape(inputs), seed) >= self.rate
    scaled = inputs / tf.cast(1.0 - self.rate, inputs.dtype)
    return tf.where(keep, scaled, tf.zeros_like(inputs))


def _conv(filters, kernel, strides, padding, name):
  return keras.layers.Conv2D(
    filters, kernel, strides, padding=padding, activation="relu", name=name
  )


def _pool(name):
  # Overlapping pooling (3x3, stride 2), as in the paper and the seed.
  return keras.layers.MaxPooling2D(3, 2, padding="valid", name=name)


def _batch_norm(name, options):
  # Either way the moving statistics stay identical on every replica: the
  # fused layer all-reduces them, synchronized BN computes global moments.
  synchronized, momentum, fused = options
  if fused:
    return FusedBatchNormalization(momentum=momentum, name=name)
  return keras.layers.BatchNormalization(
    synchronized=synchronized, momentum=momentum, name=name
  )


def _head(x, num_classes, widths, dropout_rate, portable):
  x = keras.layers.Flatten(name="flatten")(x)
  dropout = keras.layers.Dropout if portable else ReplicaDropout
  for i, width in enumerate(widths):
    x = keras.layers.Dense(width, activation="relu", name=f"fc{6 + i}")(x)
    x = dropout(dropout_rate, name=f"dropout{6 + i}")(x)
  # The output layer stays float32 under mixed precision: the loss and the
  # probabilities are computed at full precision.
  activation = "sigmoid" if num_classes == 1 else "softmax"
  return keras.layers.Dense(
    num_classes, activation=activation, dtype="float32", name="predictions"
  )(x)


def _features(name, x, batch_norm):
  """The convolutional trunk; returns (features, hidden dense widths)."""
  if name in ("seed", "seed_same"):
    pad = "valid" if name == "seed" else "same"
    x = _conv(96, 11, 4, "valid", "conv1")(x)
    x = _batch_norm("bn1", batch_norm)(x)
    x = _pool("pool1")(x)
    x = _conv(256, 5, 1, pad, "conv2")(x)
    x = _batch_norm("bn2", batch_norm)(x)
    x = _pool("pool2")(x)
    x = _conv(384, 3, 1, pad, "conv3")(x)
    x = _conv(384, 3, 1, pad, "conv4")(x)
    x = _conv(256, 3, 1, pad, "conv5")(x)
    return _pool("pool5")(x), (4096, 4096)
  if name == "original":
    x = _conv(96, 11, 4, "valid", "conv1")(x)
    x = LocalResponseNormalization(name="lrn1")(x)
    x = _pool("pool1")(x)
    x = _conv(256, 5, 1, "same", "conv2")(x)
    x = LocalResponseNormalization(name="lrn2")(x)
    x = _pool("pool2")(x)
    x = _conv(384, 3, 1, "same", "conv3")(x)
    x = _conv(384, 3, 1, "same", "conv4")(x)
    x = _conv(256, 3, 1, "same", "conv5")(x)
    return _pool("pool5")(x), (4096, 4096)
  # tiny
  x = _conv(16, 5, 2, "same", "conv1")(x)
  x = _batch_norm("bn1", batch_norm)(x)
  x = _pool("pool1")(x)
  x = _conv(32, 3, 1, "same", "conv2")(x)
  x = _batch_norm("bn2", batch_norm)(x)
  return _pool("pool2")(x), (64,)


def build_model(
  name="seed",
  num_classes=1,
  image_size=None,
  dropout_rate=0.5,
  sync_batch_norm=False,
  batch_norm_momentum=0.99,
  fused_batch_norm=True,
  portable=False,
):
  """Builds an AlexNet variant.

  Args:
    name: one of MODEL_NAMES.
    num_classes: 1 for a sigmoid binary output, 2+ for softmax.
    image_size: input side in pixels; defaults to the variant's own.
    dropout_rate: dropout after each hidden dense layer.
    sync_batch_norm: with fused_batch_norm=False, Keras' synchronized
      BatchNorm (moments over the global batch).
    batch_norm_momentum: BatchNorm moving-average momentum.
    fused_batch_norm: one fused kernel per BatchNorm, per-replica moments,
      moving statistics of the global batch.
    portable: built-in Keras layers only wherever ours differ only in how
      they run (BatchNorm, Dropout): for export. (`original` keeps its LRN.)

  Returns:
    A `keras.Model` mapping [batch, size, size, 3] pixels in 0..255 to
    probabilities ([batch, 1] for binary, [batch, num_classes] otherwise).

  Raises:
    ValueError: unknown name, bad class count, or an image too small for the
      variant.
  """
  if name not in MODEL_NAMES:
    raise ValueError(
      f"Unknown model. Expected one of {MODEL_NAMES}. Received: name={name!r}"
    )
  if num_classes < 1:
    raise ValueError(
      f"num_classes must be >= 1. Received: num_classes={num_classes}"
    )
  image_size = image_size or MODEL_IMAGE_SIZES[name]

  inputs = keras.Input((image_size, image_size, 3), name="image")
  x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
  try:
    x, widths = _features(
      name,
      x,
      (sync_batch_norm, batch_norm_momentum, fused_batch_norm and not portable),
    )
  except ValueError as e:
    # Keras' message names a pooling layer's shapes; say what to change.
    raise ValueError(
      f"image_size={image_size} is too small for model "
      f"{name!r}: {str(e).splitlines()[0]}"
    ) from None
  outputs = _head(x, num_classes, widths, dropout_rate, portable)
  return keras.Model(inputs, outputs, name=f"alexnet_{name}")


def portable_copy(
  model, name, num_classes, image_size, dropout_rate, dtype_policy="float32"
):
  """The same network and weights with built-in Keras layers (for export;
  `original`'s LRN is ours and registered for loading), computing under the
  Keras dtype policy `dtype_policy` (e.g. "float32", "mixed_bfloat16").

  Mixed precision keeps the weights in float32, so a float32 copy holds
  exactly the trained values."""
  trained_policy = keras.mixed_precision.global_policy()
  # Keras layers take the global policy when they are built: set it for the
  # copy alone, then put back what the run uses.
  keras.mixed_precision.set_global_policy(dtype_policy)
  try:
    copy = build_model(
      name, num_classes, image_size, dropout_rate, portable=True
    )
  finally:
    keras.mixed_precision.set_global_policy(trained_policy)
  copy.set_weights(model.get_weights())
  return copy


def forward_flops_per_image(model):
  """Analytic multiply-add count x2 of one forward pass (convs and dense).

  Returns:
    FLOPs (2 per multiply-add) for one image.
  """
  flops = 0
  for layer in model.layers:
    if isinstance(layer, keras.layers.Conv2D):
      out_h, out_w, out_c = layer.output.shape[1:]
      k_h, k_w, in_c, _ = layer.kernel.shape
      flops += 2 * out_h * out_w * out_c * k_h * k_w * in_c
    elif isinstance(layer, keras.layers.Dense):
      in_features, out_features = layer.kernel.shape
      flops += 2 * in_features * out_features
  return flops


def training_flops_per_image(model):
  """Forward + backward FLOPs for one training image.

  Backward is two forward passes (input and weight gradients) except that the
  first convolution needs no input gradient.
  """
  forward = forward_flops_per_image(model)
  first_conv = next(
    l for l in model.layers if isinstance(l, keras.layers.Conv2D)
  )
  out_h, out_w, out_c = first_conv.output.shape[1:]
  k_h, k_w, in_c, _ = first_conv.kernel.shape
  first_conv_flops = 2 * out_h * out_w * out_c * k_h * k_w * in_c
  return 3 * forward - first_conv_flops


def weights_digest(model):
  """SHA-256 over every weight, BatchNorm moving statistics included."""
  digest = hashlib.sha256()
  for weight in sorted(model.weights, key=lambda w: w.path):
    digest.update(weight.path.encode())
    digest.update(keras.ops.convert_to_numpy(weight).tobytes())
  return digest.hexdigest()
