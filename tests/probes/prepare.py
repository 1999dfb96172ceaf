"""Probes of trainer.prepare, which defines absl flags when imported (other
test modules import launchers that define some of the same names)."""

import io
import json

from absl import app
import numpy as np
from PIL import Image
import tensorflow as tf
import tensorflow_datasets as tfds

from trainer import prepare as prepare_lib


def tfds_cats_vs_dogs(out):
  """Prepares TFDS's cats_vs_dogs, mocked with 12 examples, into `out`;
  prints the manifest as JSON."""
  with tfds.testing.mock_data(
    num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE
  ):
    manifest = prepare_lib.prepare("tfds:cats_vs_dogs", out, num_shards=2)
  print(json.dumps(manifest))


def _png(seed, side=512):
  """An uncompressed side x side PNG (768 KB at 512), cheap to convert."""
  yy, xx = np.mgrid[0:side, 0:side]
  pixels = np.stack([xx + seed, yy, xx + yy + 3 * seed], -1) % 256
  buffer = io.BytesIO()
  Image.fromarray(pixels.astype(np.uint8)).save(
    buffer, format="PNG", compress_level=0
  )
  return buffer.getvalue()


def tfds_large_images(num_examples, out):
  """`python -m trainer.prepare --source=tfds:cats_vs_dogs --out=OUT` with
  TFDS mocked by `num_examples` large, cheap-to-convert images per split, so
  holding a split in memory shows in the peak RSS."""
  num_examples = int(num_examples)
  images = [_png(seed) for seed in range(8)]

  def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    with_id = bool(read_config and read_config.add_tfds_id)

    def examples():
      for i in range(num_examples):
        example = {"image": images[i % len(images)], "label": i % 2}
        if with_id:
          example["tfds_id"] = f"fake-{split}__{i}"
        yield example

    signature = {
      "image": tf.TensorSpec([], tf.string),
      "label": tf.TensorSpec([], tf.int64),
    }
    if with_id:
      signature["tfds_id"] = tf.TensorSpec([], tf.string)
    dataset = tf.data.Dataset.from_generator(
      examples, output_signature=signature
    )
    return dataset.apply(tf.data.experimental.assert_cardinality(num_examples))

  with tfds.testing.mock_data(
    policy=tfds.testing.MockPolicy.USE_CODE, as_dataset_fn=as_dataset
  ):
    app.run(
      prepare_lib.main,
      argv=["prepare", "--source=tfds:cats_vs_dogs", f"--out={out}"],
    )


def shard_counts():
  """Prints choose_num_shards for a large, a mid-sized and a tiny split."""
  print(
    prepare_lib.choose_num_shards(1_000_000, 110_000, readers=1),
    prepare_lib.choose_num_shards(23_000, 30_000, readers=4),
    prepare_lib.choose_num_shards(5, 30_000, readers=4),
  )
