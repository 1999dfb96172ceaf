"""Writing sharded TFRecords and their manifest, atomically, local or gs://.

A shard appears under its final name only once it is complete: it is written
under a temporary name in the same directory and renamed (a copy on gs://,
where objects appear whole or not at all). A killed writer leaves only
`*.tmp-*` files, which readers never match and a re-run replaces.
"""

import json
import os
import uuid

import tensorflow as tf

MANIFEST = "manifest.json"


def image_example(encoded, label, height, width, image_format="jpeg"):
  """A tf.train.Example in the ImageNet / Model Garden layout."""

  def _bytes(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

  def _int(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

  return tf.train.Example(
    features=tf.train.Features(
      feature={
        "image/encoded": _bytes(encoded),
        "image/format": _bytes(image_format.encode()),
        "image/class/label": _int(label),
        "image/height": _int(height),
        "image/width": _int(width),
      }
    )
  )


def read_labels_and_sizes(path):
  """Yields (label, height, width) of each `image_example` in a shard."""
  features = {
    key: tf.io.FixedLenFeature([], tf.int64)
    for key in ("image/class/label", "image/height", "image/width")
  }
  dataset = tf.data.TFRecordDataset(path).map(
    lambda record: tf.io.parse_single_example(record, features)
  )
  for example in dataset.as_numpy_iterator():
    yield (
      int(example["image/class/label"]),
      int(example["image/height"]),
      int(example["image/width"]),
    )


def shard_name(split, index, count):
  return f"{split}-{index:05d}-of-{count:05d}"


def _temporary_path(path):
  # Unique per writer so concurrent or restarted runs never share a temp file.
  return f"{path}.tmp-{uuid.uuid4().hex[:8]}"


def write_shard(path, serialized_records):
  """Writes records to `path` atomically. Returns the record count."""
  temporary = _temporary_path(path)
  count = 0
  try:
    with tf.io.TFRecordWriter(temporary) as writer:
      for record in serialized_records:
        writer.write(record)
        count += 1
    tf.io.gfile.rename(temporary, path, overwrite=True)
  except BaseException:
    if tf.io.gfile.exists(temporary):
      tf.io.gfile.remove(temporary)
    raise
  return count


def write_bytes_atomically(path, content):
  temporary = _temporary_path(path)
  with tf.io.gfile.GFile(temporary, "wb") as f:
    f.write(content)
  tf.io.gfile.rename(temporary, path, overwrite=True)


def write_text_atomically(path, text):
  write_bytes_atomically(path, text.encode("utf-8"))


def write_manifest(directory, manifest):
  write_text_atomically(
    os.path.join(directory, MANIFEST),
    json.dumps(manifest, indent=2, sort_keys=True),
  )


def read_manifest(directory):
  """The manifest in `directory`, or None if there is none."""
  path = os.path.join(directory, MANIFEST)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)
