"""Image augmentations beyond crops and flips, and the training targets.

Per-image augmentations (RandAugment, the paper's PCA lighting) run on the
host inside tf.data, uint8 in and uint8 out, with stateless randomness from
the image's own seed (data.decode_for_training), so an image's augmentation
depends only on (seed, epoch, position, pipeline) and a resumed run draws it
again exactly.

Batch augmentations (mixup, cutmix) run on the device inside the training
step, within each replica's batch: the host pipeline stays uint8, and their
randomness is drawn from (seed, global step, replica), so every replica mixes
differently, every step differently, and a resumed run identically.
"""

import math

import tensorflow as tf

# ImageNet's RGB eigen-decomposition (pixels in [0, 1]), as published with
# fb.resnet.torch (datasets/imagenet.lua) and used by the TF Model Garden.
PCA_EIGENVALUES = (0.2175, 0.0188, 0.0045)
PCA_EIGENVECTORS = (
  (-0.5675, 0.7192, 0.4009),
  (-0.5808, -0.0045, -0.8140),
  (-0.5836, -0.6948, 0.4203),
)

RANDAUGMENT_NUM_OPS = 2
MAX_MAGNITUDE = 10  # RandAugment's magnitude scale, as timm and Model Garden.
_FILL = 128.0  # Grey for pixels geometric ops bring in from outside.


def _to_uint8(image):
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def pca_lighting(image, std, seed):
  """Krizhevsky et al.'s colour augmentation: adds a random multiple of
  ImageNet's RGB principal components to every pixel.

  Args:
    image: uint8 [h, w, 3].
    std: standard deviation of the per-component factor (the paper: 0.1).
    seed: [2] int stateless seed.

  Returns:
    uint8 [h, w, 3]: image + 255 * eigenvectors @ (alpha * eigenvalues), with
    alpha ~ N(0, std) drawn once per image, rounded.
  """
  alpha = tf.random.stateless_normal([3], seed=seed, stddev=std)
  shift = tf.linalg.matvec(
    tf.constant(PCA_EIGENVECTORS), alpha * tf.constant(PCA_EIGENVALUES)
  )
  return _to_uint8(tf.cast(image, tf.float32) + 255.0 * shift)


# ----------------------------------------------------------------------------
# RandAugment (Cubuk et al. 2019): N random ops at one magnitude M.
# Each op takes a float32 [h, w, 3] image in [0, 255], a level in [0, 1]
# (M / 10) and a random sign, and returns one in [0, 255].


def _blend(image, degenerate, factor):
  # PIL's ImageEnhance: factor 0 = the degenerate image, 1 = the original.
  return tf.clip_by_value(degenerate + factor * (image - degenerate), 0, 255)


def _grayscale(image):
  return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))


def _enhance_factor(level, sign):
  return 1.0 + sign * level * 0.9  # timm: 0.1..1.9 at M=10


def _transform(image, matrix):
  """Projective transform (output -> input coordinates), grey fill."""
  shape = tf.shape(image)[:2]
  return tf.raw_ops.ImageProjectiveTransformV3(
    images=image[None],
    transforms=tf.reshape(matrix, [1, 8]),
    output_shape=shape,
    fill_value=_FILL,
    interpolation="NEAREST",
    fill_mode="CONSTANT",
  )[0]


def _rotate(image, level, sign):
  angle = sign * level * 30.0 * math.pi / 180.0
  height = tf.cast(tf.shape(image)[0], tf.float32) - 1
  width = tf.cast(tf.shape(image)[1], tf.float32) - 1
  cos, sin = tf.cos(angle), tf.sin(angle)
  x_offset = (width - (cos * width - sin * height)) / 2
  y_offset = (height - (sin * width + cos * height)) / 2
  return _transform(
    image, tf.stack([cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0])
  )


def _shear_x(image, level, sign):
  return _transform(
    image, tf.stack([1.0, sign * level * 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
  )


def _shear_y(image, level, sign):
  return _transform(
    image, tf.stack([1.0, 0.0, 0.0, sign * level * 0.3, 1.0, 0.0, 0.0, 0.0])
  )


def _translate_x(image, level, sign):
  pixels = sign * level * 0.45 * tf.cast(tf.shape(image)[1], tf.float32)
  return _transform(
    image, tf.stack([1.0, 0.0, -pixels, 0.0, 1.0, 0.0, 0.0, 0.0])
  )


def _translate_y(image, level, sign):
  pixels = sign * level * 0.45 * tf.cast(tf.shape(image)[0], tf.float32)
  return _transform(
    image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, -pixels, 0.0, 0.0])
  )


def _auto_contrast(image, level, sign):
  del level, sign
  low = tf.reduce_min(image, axis=[0, 1])
  high = tf.reduce_max(image, axis=[0, 1])
  scale = tf.where(high > low, 255.0 / tf.maximum(high - low, 1e-6), 1.0)
  offset = tf.where(high > low, low, 0.0)
  return tf.clip_by_value((image - offset) * scale, 0, 255)


def _equalize_channel(channel):
  """PIL's ImageOps.equalize for one channel of whole numbers 0..255."""
  histogram = tf.histogram_fixed_width(channel, [0.0, 255.0], nbins=256)
  nonzero = tf.boolean_mask(histogram, histogram > 0)
  step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
  lookup = tf.clip_by_value(
    (tf.concat([[0], tf.cumsum(histogram)[:-1]], 0) + step // 2)
    // tf.maximum(step, 1),
    0,
    255,
  )
  equalized = tf.gather(tf.cast(lookup, tf.float32), tf.cast(channel, tf.int32))
  return tf.where(step > 0, equalized, channel)


def _equalize(image, level, sign):
  del level, sign
  return tf.stack([_equalize_channel(image[..., c]) for c in range(3)], -1)


def _invert(image, level, sign):
  del level, sign
  return 255.0 - image


def _posterize(image, level, sign):
  del sign
  drop = tf.cast(level * 4, tf.int32)  # keep 8..4 bits
  shifted = tf.bitwise.right_shift(
    tf.cast(image, tf.uint8), tf.cast(drop, tf.uint8)
  )
  return tf.cast(
    tf.bitwise.left_shift(shifted, tf.cast(drop, tf.uint8)), tf.float32
  )


def _solarize(image, level, sign):
  del sign
  threshold = 256.0 - level * 256.0
  return tf.where(image >= threshold, 255.0 - image, image)


def _solarize_add(image, level, sign):
  del sign
  return tf.where(image < 128, tf.minimum(image + level * 110.0, 255.0), image)


def _color(image, level, sign):
  return _blend(image, _grayscale(image), _enhance_factor(level, sign))


def _contrast(image, level, sign):
  mean = tf.reduce_mean(tf.image.rgb_to_grayscale(image))
  return _blend(
    image, tf.fill(tf.shape(image), mean), _enhance_factor(level, sign)
  )


def _brightness(image, level, sign):
  return _blend(image, tf.zeros_like(image), _enhance_factor(level, sign))


def _sharpness(image, level, sign):
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(
    image[None], kernel, [1, 1, 1, 1], padding="SAME"
  )[0]
  return _blend(image, smooth, _enhance_factor(level, sign))


def _identity(image, level, sign):
  del level, sign
  return image


RANDAUGMENT_OPS = (
  ("identity", _identity),
  ("auto_contrast", _auto_contrast),
  ("equalize", _equalize),
  ("invert", _invert),
  ("rotate", _rotate),
  ("posterize", _posterize),
  ("solarize", _solarize),
  ("solarize_add", _solarize_add),
  ("color", _color),
  ("contrast", _contrast),
  ("brightness", _brightness),
  ("sharpness", _sharpness),
  ("shear_x", _shear_x),
  ("shear_y", _shear_y),
  ("translate_x", _translate_x),
  ("translate_y", _translate_y),
)


def randaugment(image, magnitude, seed, num_ops=RANDAUGMENT_NUM_OPS):
  """RandAugment: `num_ops` ops drawn uniformly (with replacement) from
  RANDAUGMENT_OPS, each at `magnitude` with a random sign where it has one.

  Args:
    image: uint8 [h, w, 3].
    magnitude: 0..MAX_MAGNITUDE.
    seed: [2] int stateless seed; the same seed gives the same ops and signs.
    num_ops: ops applied in sequence.

  Returns:
    uint8 [h, w, 3].
  """
  level = float(magnitude) / MAX_MAGNITUDE
  result = tf.cast(image, tf.float32)
  for index in range(num_ops):
    op_seed = tf.random.experimental.stateless_fold_in(seed, 100 + index)
    choice = tf.random.stateless_uniform(
      [], op_seed, 0, len(RANDAUGMENT_OPS), dtype=tf.int32
    )
    sign_seed = tf.random.experimental.stateless_fold_in(op_seed, 1)
    sign = tf.where(tf.random.stateless_uniform([], sign_seed) < 0.5, -1.0, 1.0)
    # Called by switch_case below, in this iteration: `sign` is this one's.
    branches = [
      lambda op=op, image=result: op(image, level, sign)  # noqa: B023
      for _, op in RANDAUGMENT_OPS
    ]
    result = tf.switch_case(choice, branches)
    # Whole numbers between ops, as PIL's uint8 images.
    result = tf.clip_by_value(tf.round(result), 0, 255)
    result.set_shape(image.shape)
  return tf.cast(result, tf.uint8)


# ----------------------------------------------------------------------------
# Targets, and mixup / cutmix on the device.


def soft_targets(labels, num_classes, label_smoothing=0.0):
  """Float targets for the loss: [b] P(class 1) when num_classes == 1, else
  one-hot [b, k]; smoothed as Keras' losses do (binary: y(1-s) + s/2,
  categorical: y(1-s) + s/k)."""
  if num_classes == 1:
    targets = tf.cast(labels, tf.float32)
    return targets * (1 - label_smoothing) + 0.5 * label_smoothing
  targets = tf.one_hot(tf.cast(labels, tf.int32), num_classes)
  return targets * (1 - label_smoothing) + label_smoothing / num_classes


def mixing_seed(seed, step, replica_id):
  """The stateless seed of one replica's mixing at one global step."""
  base = tf.stack(
    [tf.constant(seed, tf.int64) * 100_003 + 7, tf.cast(step, tf.int64)]
  )
  return tf.random.experimental.stateless_fold_in(base, replica_id)


def _beta(alpha, seed):
  """One draw of Beta(alpha, alpha) by inverting its CDF (bisection on
  tf.math.betainc, 2^-30 apart): TF has no stateless beta, and its stateless
  gamma has no XLA kernel (TPUs compile the step)."""
  u = tf.random.stateless_uniform([], seed)
  alpha = tf.constant(alpha, tf.float32)

  def halve(i, low, high):
    middle = (low + high) / 2
    below = tf.math.betainc(alpha, alpha, middle) < u
    return i + 1, tf.where(below, middle, low), tf.where(below, high, middle)

  # A loop, not 30 unrolled copies: XLA compiles betainc once (~1 s).
  _, low, high = tf.while_loop(
    lambda i, low, high: i < 30, halve, (0, tf.constant(0.0), tf.constant(1.0))
  )
  return (low + high) / 2


def _cutmix_keep_mask(height, width, lam, seed):
  """[h, w, 1] bool: False inside a random box of area ~(1 - lam), True
  outside (timm's rand_bbox: centre uniform, box clipped at the borders)."""
  ratio = tf.sqrt(1.0 - lam)
  cut_h = tf.cast(tf.cast(height, tf.float32) * ratio, tf.int32)
  cut_w = tf.cast(tf.cast(width, tf.float32) * ratio, tf.int32)
  centre = tf.random.stateless_uniform([2], seed, 0, 1)
  cy = tf.cast(centre[0] * tf.cast(height, tf.float32), tf.int32)
  cx = tf.cast(centre[1] * tf.cast(width, tf.float32), tf.int32)
  top, bottom = (
    tf.clip_by_value(cy - cut_h // 2, 0, height),
    tf.clip_by_value(cy + cut_h // 2, 0, height),
  )
  left, right = (
    tf.clip_by_value(cx - cut_w // 2, 0, width),
    tf.clip_by_value(cx + cut_w // 2, 0, width),
  )
  rows = tf.range(height)[:, None]
  cols = tf.range(width)[None, :]
  inside = ((rows >= top) & (rows < bottom)) & ((cols >= left) & (cols < right))
  return tf.logical_not(inside)[..., None]


def mix_batch(images, targets, labels, mixup_alpha, cutmix_alpha, seed):
  """Mixup or cutmix of one replica's batch with a permutation of itself
  (a single cycle, so each image gets another image).

  One lambda ~ Beta(alpha, alpha) per batch (as timm); with both alphas > 0,
  each batch takes one of the two with equal odds (timm's switch).

  Args:
    images: [b, h, w, 3] (uint8 or any float dtype).
    targets: soft targets ([b] binary or [b, k]), see soft_targets.
    labels: integer labels [b].
    mixup_alpha, cutmix_alpha: Python floats >= 0, not both 0.
    seed: [2] stateless seed (mixing_seed).

  Returns:
    (images float32, targets, labels, keep): mixed images; targets mixed by
    each image's own share of its pixels (`keep`, float32 scalar: lambda for
    mixup, the exact area left unpasted for cutmix); labels of the larger
    share, for accuracy.
  """
  batch_size = tf.shape(images)[0]
  height, width = images.shape[1], images.shape[2]
  seeds = [tf.random.experimental.stateless_fold_in(seed, i) for i in range(4)]
  # A random cycle through the batch: nobody is its own partner.
  order = tf.argsort(tf.random.stateless_uniform([batch_size], seeds[0]))
  partner = tf.gather(tf.roll(order, -1, axis=0), tf.argsort(order))
  # Gathered in the input dtype: uint8 moves a quarter of float32's bytes.
  partner_images = tf.gather(images, partner)

  def mixup():
    keep = _beta(mixup_alpha, seeds[2])
    return (
      keep * tf.cast(images, tf.float32)
      + (1 - keep) * tf.cast(partner_images, tf.float32)
    ), keep

  def cutmix():
    keep_mask = _cutmix_keep_mask(
      height, width, _beta(cutmix_alpha, seeds[2]), seeds[3]
    )
    mixed = tf.where(keep_mask, images, partner_images)  # still uint8
    return (
      tf.cast(mixed, tf.float32),
      tf.reduce_mean(tf.cast(keep_mask, tf.float32)),
    )

  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = tf.random.stateless_uniform([], seeds[1]) < 0.5
    mixed, keep = tf.cond(use_cutmix, cutmix, mixup)
  else:
    mixed, keep = cutmix() if cutmix_alpha > 0 else mixup()
  mixed_targets = keep * targets + (1 - keep) * tf.gather(targets, partner)
  labels = tf.where(keep >= 0.5, labels, tf.gather(labels, partner))
  return mixed, mixed_targets, labels, keep


def training_batch(images, labels, config, step):
  """What one replica's training step feeds the model and the loss.

  Args:
    images, labels: this replica's batch from the input pipeline.
    config: the run's Config (label_smoothing, mixup_alpha, cutmix_alpha,
      num_classes, seed).
    step: the global step (int64 scalar) this batch trains.

  Returns:
    (images, loss targets, labels for accuracy): the batch unchanged with
    integer labels when no option is on; else soft targets, mixed images and
    the labels of the larger mixing weight.
  """
  mixing = config.mixup_alpha > 0 or config.cutmix_alpha > 0
  if not mixing and not config.label_smoothing:
    return images, labels, labels
  targets = soft_targets(labels, config.num_classes, config.label_smoothing)
  if mixing:
    context = tf.distribute.get_replica_context()
    replica_id = context.replica_id_in_sync_group if context else 0
    seed = mixing_seed(config.seed, step, replica_id)
    images, targets, labels, _ = mix_batch(
      images, targets, labels, config.mixup_alpha, config.cutmix_alpha, seed
    )
  return images, targets, labels
