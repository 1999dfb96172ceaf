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

import keras
import tensorflow as tf

MODEL_NAMES = ("seed", "seed_same", "original", "tiny")

# Default input side per variant; the paper's 227 makes conv1 'valid' exact.
DEFAULT_IMAGE_SIZE = {"seed": 224, "seed_same": 224, "original": 227, "tiny": 32}


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
        tf.cast(inputs, tf.float32), depth_radius=self.depth_radius,
        bias=self.bias, alpha=self.alpha, beta=self.beta)
    return tf.cast(normalized, inputs.dtype)

  def get_config(self):
    return {**super().get_config(), "depth_radius": self.depth_radius,
            "bias": self.bias, "alpha": self.alpha, "beta": self.beta}


def _conv(filters, kernel, strides, padding, name):
  return keras.layers.Conv2D(filters, kernel, strides, padding=padding,
                             activation="relu", name=name)


def _pool(name):
  # Overlapping pooling (3x3, stride 2), as in the paper and the seed.
  return keras.layers.MaxPooling2D(3, 2, padding="valid", name=name)


def _batch_norm(name, options):
  # Synchronized BN computes batch moments over the global batch, so moving
  # statistics stay identical on every replica and worker.
  synchronized, momentum = options
  return keras.layers.BatchNormalization(synchronized=synchronized,
                                         momentum=momentum, name=name)


def _head(x, num_classes, widths, dropout_rate):
  x = keras.layers.Flatten(name="flatten")(x)
  for i, width in enumerate(widths):
    x = keras.layers.Dense(width, activation="relu", name=f"fc{6 + i}")(x)
    x = keras.layers.Dropout(dropout_rate, name=f"dropout{6 + i}")(x)
  # The output layer stays float32 under mixed precision: the loss and the
  # probabilities are computed at full precision.
  activation = "sigmoid" if num_classes == 1 else "softmax"
  return keras.layers.Dense(num_classes, activation=activation,
                            dtype="float32", name="predictions")(x)


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


def build_model(name="seed", num_classes=1, image_size=None,
                dropout_rate=0.5, sync_batch_norm=False,
                batch_norm_momentum=0.99):
  """Builds an AlexNet variant.

  Args:
    name: one of MODEL_NAMES.
    num_classes: 1 for a sigmoid binary output, 2+ for softmax.
    image_size: input side in pixels; defaults to the variant's own.
    dropout_rate: dropout after each hidden dense layer.
    sync_batch_norm: synchronise BatchNorm statistics across replicas.
    batch_norm_momentum: BatchNorm moving-average momentum.

  Returns:
    A `keras.Model` mapping [batch, size, size, 3] pixels in 0..255 to
    probabilities ([batch, 1] for binary, [batch, num_classes] otherwise).

  Raises:
    ValueError: unknown name, bad class count, or an image too small for the
      variant.
  """
  if name not in MODEL_NAMES:
    raise ValueError(f"Unknown model. Expected one of {MODEL_NAMES}. "
                     f"Received: name={name!r}")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1. Received: num_classes={num_classes}")
  image_size = image_size or DEFAULT_IMAGE_SIZE[name]

  inputs = keras.Input((image_size, image_size, 3), name="image")
  x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
  try:
    x, widths = _features(name, x, (sync_batch_norm, batch_norm_momentum))
  except ValueError as e:
    # Keras' message names a pooling layer's shapes; say what to change.
    raise ValueError(f"image_size={image_size} is too small for model "
                     f"{name!r}: {str(e).splitlines()[0]}") from None
  outputs = _head(x, num_classes, widths, dropout_rate)
  return keras.Model(inputs, outputs, name=f"alexnet_{name}")


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
  first_conv = next(l for l in model.layers if isinstance(l, keras.layers.Conv2D))
  out_h, out_w, out_c = first_conv.output.shape[1:]
  k_h, k_w, in_c, _ = first_conv.kernel.shape
  first_conv_flops = 2 * out_h * out_w * out_c * k_h * k_w * in_c
  return 3 * forward - first_conv_flops
