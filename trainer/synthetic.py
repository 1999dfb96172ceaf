"""The built-in demo data: a learnable two-class image set, drawn procedurally.

Class 0 ("horizontal") and class 1 ("vertical") images hold stripes of a
random period, phase, tilt and colour pair on a noisy, shaded background,
encoded as JPEG. Nothing is downloaded. The set is written once as sharded TFRecords in
the ImageNet layout, with a manifest, and read by the same reader as real data.
"""

import io
import logging
import os

import numpy as np
from PIL import Image
import tensorflow as tf

from trainer import records

log = logging.getLogger(__name__)

CLASS_NAMES = ("horizontal", "vertical")
VERSION = 2  # Bump when the drawing changes, so cached sets are redrawn.


def draw_image(rng, label, size):
  """One RGB uint8 image of class `label` (0 horizontal, 1 vertical stripes).

  Stripes of random period, phase, colours and a tilt of up to 20 degrees
  over a shaded, noisy background: flips and crops keep the class, colour
  and brightness carry no information.
  """
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  angle = np.deg2rad(rng.uniform(-20, 20) + (90 if label == 1 else 0))
  period = rng.uniform(0.06, 0.16)
  along = yy * np.cos(angle) + xx * np.sin(angle)
  wave = 0.5 + 0.5 * np.sin(
    2 * np.pi * along / period + rng.uniform(0, 2 * np.pi)
  )
  dark, light = rng.uniform(0, 110, 3), rng.uniform(145, 255, 3)
  image = dark + wave[..., None] * (light - dark)
  image += rng.uniform(-40, 40, 3) * (xx[..., None] - 0.5)
  image += rng.normal(0, 14, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def encode_jpeg(pixels):
  """JPEG bytes (quality 90) of an RGB uint8 array."""
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
  return buffer.getvalue()


def _examples(num_examples, size, seed):
  rng = np.random.default_rng(seed)
  for i in range(num_examples):
    label = i % 2
    yield records.image_example(
      encode_jpeg(draw_image(rng, label, size)), label, size, size
    ).SerializeToString()


def default_dir():
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(
    os.path.expanduser("~"), ".cache"
  )
  return os.path.join(cache, "alexnet_tf", "synthetic")


def write_split(directory, split, num_examples, num_shards, size, seed):
  """Writes one split as `num_shards` shards; returns the shard entries."""
  shards = []
  per_shard = -(-num_examples // num_shards)
  examples = _examples(num_examples, size, seed)
  for index in range(num_shards):
    count = min(per_shard, num_examples - index * per_shard)
    name = records.shard_name(split, index, num_shards)
    written = records.write_shard(
      os.path.join(directory, name), (next(examples) for _ in range(count))
    )
    shards.append({"file": name, "num_examples": written})
  return shards


def ensure_dataset(
  base_dir, train_examples, eval_examples, image_size=256, seed=0
):
  """Writes the synthetic set unless an identical one exists.

  Returns:
    (train_pattern, eval_pattern) file patterns.
  """
  base_dir = base_dir or default_dir()
  name = f"v{VERSION}-{image_size}px-{train_examples}-{eval_examples}-s{seed}"
  directory = os.path.join(base_dir, name)
  patterns = (
    os.path.join(directory, "train-*-of-*"),
    os.path.join(directory, "validation-*-of-*"),
  )
  if records.read_manifest(directory):  # Written last: its presence means done.
    return patterns
  log.info(
    "Writing the built-in synthetic set (%d train, %d validation "
    "images) to %s, once.",
    train_examples,
    eval_examples,
    directory,
  )
  tf.io.gfile.makedirs(directory)
  splits = {}
  for split, count, split_seed in (
    ("train", train_examples, seed),
    ("validation", eval_examples, seed + 1),
  ):
    if count == 0:
      continue
    num_shards = max(1, min(8, count // 256))
    shards = write_split(
      directory, split, count, num_shards, image_size, split_seed
    )
    splits[split] = {
      "num_examples": count,
      "shards": shards,
      "per_class": {
        c: count // 2 + (count % 2 if i == 0 else 0)
        for i, c in enumerate(CLASS_NAMES)
      },
    }
  records.write_manifest(
    directory,
    {
      "source": "synthetic",
      "class_names": list(CLASS_NAMES),
      "schema": "imagenet",
      "image_size": [image_size, image_size],
      "splits": splits,
    },
  )
  return patterns
