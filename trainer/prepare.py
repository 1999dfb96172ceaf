"""Turn image collections into sharded TFRecords: python -m trainer.prepare

    python -m trainer.prepare --source=tfds:cats_vs_dogs --out=gs://my-bucket/cats_vs_dogs
    python -m trainer.prepare --source=folder:~/Downloads/PetImages --out=data/pets --resize_to=256
    python -m trainer.prepare --source=synthetic --out=data/stripes

Sources:
  tfds:NAME      any TFDS image-classification dataset (`--tfds_data_dir` may be
                 gs://). Without a validation split, `train[:80%]` /
                 `train[80%:]` (the seed's split; `--validation_fraction`).
  folder:PATH    one sub-folder per class (PetImages/Cat/*.jpg), or a flat
                 folder whose file names carry the class (cat.123.jpg).
                 The validation split is drawn per class from `--split_seed`.
  synthetic      the built-in stripes set.

Every image is fully decoded with Pillow; PNG, BMP, GIF, CMYK, grayscale and
anything TensorFlow's JPEG decoder rejects is re-encoded as RGB JPEG; files no
decoder reads are skipped, counted and listed in the manifest. Shards are
written under temporary names and renamed when complete, so re-running after
a crash finishes the job. The exit status is non-zero only when nothing usable
was found.
"""

import collections
import concurrent.futures
import dataclasses
import io
import math
import os
import random
import sys
import warnings

from absl import app
from absl import flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from PIL import Image  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from trainer import records  # pylint: disable=g-import-not-at-top
from trainer.errors import UserError  # pylint: disable=g-import-not-at-top

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif",
                    ".tiff")
TARGET_SHARD_BYTES = 150 << 20  # Middle of the 100-200 MB sweet spot for GCS.
MAX_LISTED_SKIPS = 1000


@dataclasses.dataclass(frozen=True)
class Item:
  """One image to write: where its bytes come from and its label."""
  name: str        # a path, or "tfds:<split>:<index>"
  label: int
  encoded: bytes = b""  # set for in-memory sources (TFDS, synthetic)


@dataclasses.dataclass(frozen=True)
class Converted:
  name: str
  label: int
  encoded: bytes = b""
  height: int = 0
  width: int = 0
  skip_reason: str = ""


# ----------------------------------------------------------------------------
# Decoding and re-encoding.


def _tf_can_decode_jpeg(encoded):
  try:
    tf.io.decode_jpeg(encoded, channels=3)
    return True
  except tf.errors.OpError:
    return False


def convert_image(encoded, resize_to=0, quality=90):
  """Validated JPEG bytes and (height, width), or raises ValueError(reason).

  JPEG bytes that need no change pass through untouched (no quality loss).
  """
  if not encoded:
    raise ValueError("empty file")
  with warnings.catch_warnings():
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    try:
      image = Image.open(io.BytesIO(encoded))
      source_format = image.format
      image.load()  # Full decode: catches truncated and corrupt data.
    except Image.DecompressionBombWarning as e:
      raise ValueError(f"image too large ({e})") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
      reason = str(e).split(" (")[0] or type(e).__name__
      if "cannot identify image file" in reason:
        reason = "not an image"
      raise ValueError(reason) from None
  needs_resize = resize_to and min(image.size) > resize_to
  if (source_format == "JPEG" and image.mode == "RGB" and not needs_resize
      and _tf_can_decode_jpeg(encoded)):
    return encoded, image.height, image.width
  if image.mode != "RGB":
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and
                                        "transparency" in image.info):
      # Composite transparency onto white rather than black.
      rgba = image.convert("RGBA")
      image = Image.new("RGB", image.size, (255, 255, 255))
      image.paste(rgba, mask=rgba.split()[3])
    else:
      image = image.convert("RGB")
  if needs_resize:
    scale = resize_to / min(image.size)
    image = image.resize((max(1, round(image.width * scale)),
                          max(1, round(image.height * scale))),
                         Image.Resampling.BILINEAR, reducing_gap=2.0)
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=quality)
  return buffer.getvalue(), image.height, image.width


def _convert(item, resize_to, quality):
  try:
    encoded = item.encoded
    if not encoded:
      with tf.io.gfile.GFile(item.name, "rb") as f:
        encoded = f.read()
    encoded, height, width = convert_image(encoded, resize_to, quality)
    return Converted(item.name, item.label, encoded, height, width)
  except (ValueError, OSError, tf.errors.OpError) as e:
    return Converted(item.name, item.label, skip_reason=str(e) or type(e).__name__)


# ----------------------------------------------------------------------------
# Sources: each returns (class_names, {split: [Item]}, estimated bytes/image).


def _label_from_filename(name):
  stem = os.path.basename(name)
  for separator in (".", "_", "-"):
    if separator in stem:
      return stem.split(separator)[0].lower()
  return ""


def _is_image(name):
  return name.lower().endswith(IMAGE_EXTENSIONS)


def folder_source(path, validation_fraction, split_seed):
  path = os.path.expanduser(path)
  if not tf.io.gfile.isdir(path):
    raise UserError(f"--source=folder:{path}: not a directory")
  entries = sorted(tf.io.gfile.listdir(path))
  subdirs = [e.rstrip("/") for e in entries
             if tf.io.gfile.isdir(os.path.join(path, e))]
  by_class = collections.defaultdict(list)
  if subdirs:
    for class_name in subdirs:
      directory = os.path.join(path, class_name)
      # Every file is a candidate: a misnamed or non-image file is skipped
      # with a reason, not silently ignored.
      for name in sorted(tf.io.gfile.listdir(directory)):
        full = os.path.join(directory, name)
        if not tf.io.gfile.isdir(full):
          by_class[class_name].append(full)
  else:
    for name in entries:
      if _is_image(name) and _label_from_filename(name):
        by_class[_label_from_filename(name)].append(os.path.join(path, name))
  if len(by_class) < 2:
    raise UserError(f"--source=folder:{path}: found {len(by_class)} class(es); "
                    "expected one sub-folder per class (Cat/, Dog/) or file "
                    "names that start with the class (cat.1.jpg, dog.2.jpg)")
  class_names = sorted(by_class)
  splits = {"train": [], "validation": []}
  rng = random.Random(split_seed)
  for label, class_name in enumerate(class_names):
    files = list(by_class[class_name])
    rng.shuffle(files)  # Stratified, seeded: the same split on every run.
    num_validation = int(round(len(files) * validation_fraction))
    splits["validation"] += [Item(f, label) for f in files[:num_validation]]
    splits["train"] += [Item(f, label) for f in files[num_validation:]]
  sizes = [tf.io.gfile.stat(i.name).length for i in splits["train"][:200]]
  return class_names, splits, sum(sizes) / max(1, len(sizes))


def tfds_source(name, data_dir, validation_fraction):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=data_dir or None)
  builder.download_and_prepare()
  info = builder.info
  image_keys = [k for k, v in info.features.items()
                if isinstance(v, tfds.features.Image)]
  label_keys = [k for k, v in info.features.items()
                if isinstance(v, tfds.features.ClassLabel)]
  if not image_keys or not label_keys:
    raise UserError(f"--source=tfds:{name}: not an image-classification "
                    f"dataset (features: {list(info.features)})")
  image_key, label_key = image_keys[0], label_keys[0]
  available = set(info.splits)
  validation_split = next((s for s in ("validation", "test") if s in available),
                          None)
  if validation_split:
    split_specs = {"train": "train", "validation": validation_split}
  else:
    cut = int(round(100 * (1 - validation_fraction)))
    split_specs = {"train": f"train[:{cut}%]", "validation": f"train[{cut}%:]"}
  splits = {}
  for split, spec in split_specs.items():
    dataset = builder.as_dataset(
        split=spec, shuffle_files=False,
        decoders={image_key: tfds.decode.SkipDecoding()})
    splits[split] = [
        Item(f"tfds:{spec}:{i}", int(example[label_key]),
             bytes(example[image_key].numpy()))
        for i, example in enumerate(dataset)]
  sample = splits["train"][:200]
  return (list(info.features[label_key].names), splits,
          sum(len(i.encoded) for i in sample) / max(1, len(sample)))


def synthetic_source(train_examples, eval_examples, size):
  from trainer import synthetic  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  splits = {}
  for split, count, seed in (("train", train_examples, 0),
                             ("validation", eval_examples, 1)):
    rng = np.random.default_rng(seed)
    items = []
    for i in range(count):
      encoded = synthetic.encode_jpeg(synthetic.draw_image(rng, i % 2, size))
      items.append(Item(f"synthetic:{split}:{i}", i % 2, encoded))
    splits[split] = items
  return list(synthetic.CLASS_NAMES), splits, 20_000


# ----------------------------------------------------------------------------
# Writing.


def choose_num_shards(num_examples, bytes_per_example, readers):
  """~150 MB per shard, and at least 10 shards per reader (but <= examples)."""
  by_size = math.ceil(num_examples * bytes_per_example / TARGET_SHARD_BYTES)
  return max(1, min(num_examples, max(by_size, 10 * readers)))


class _Progress:
  def __init__(self, total, label):
    self.total, self.label, self.done = total, label, 0
    self.tty = sys.stderr.isatty()
    self._last_percent = -1

  def add(self, n):
    self.done += n
    percent = int(100 * self.done / max(1, self.total))
    if self.tty:
      width = 30
      filled = int(width * self.done / max(1, self.total))
      sys.stderr.write(f"\r{self.label} [{'=' * filled}{' ' * (width - filled)}]"
                       f" {self.done}/{self.total}")
      if self.done >= self.total:
        sys.stderr.write("\n")
    elif percent // 10 != self._last_percent // 10:
      print(f"{self.label}: {self.done}/{self.total} images", file=sys.stderr)
    self._last_percent = percent
    sys.stderr.flush()


def _count_records(path):
  return sum(1 for _ in tf.data.TFRecordDataset(path))


def write_split(out, split, items, num_shards, resize_to, quality, workers,
                skipped, sizes):
  """Converts and writes one split; returns its shard entries."""
  shards = []
  progress = _Progress(len(items), f"{split}")
  per_shard = math.ceil(len(items) / num_shards)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for index in range(num_shards):
      chunk = items[index * per_shard:(index + 1) * per_shard]
      name = records.shard_name(split, index, num_shards)
      path = os.path.join(out, name)
      if tf.io.gfile.exists(path):
        # Complete from an earlier run (shards only appear when whole).
        shards.append({"file": name, "num_examples": _count_records(path),
                       "resumed": True})
        progress.add(len(chunk))
        continue
      serialized = []
      for converted in pool.map(lambda i: _convert(i, resize_to, quality), chunk):
        if converted.skip_reason:
          skipped.append({"file": converted.name, "reason": converted.skip_reason})
          continue
        sizes.append((converted.height, converted.width))
        serialized.append(records.image_example(
            converted.encoded, converted.label, converted.height,
            converted.width).SerializeToString())
      records.write_shard(path, serialized)
      shards.append({"file": name, "num_examples": len(serialized)})
      progress.add(len(chunk))
  return shards


def _size_stats(sizes):
  if not sizes:
    return {}
  heights = sorted(h for h, _ in sizes)
  widths = sorted(w for _, w in sizes)
  def stats(values):
    return {"min": values[0], "max": values[-1],
            "mean": round(sum(values) / len(values), 1),
            "median": values[len(values) // 2]}
  return {"height": stats(heights), "width": stats(widths)}


def prepare(source, out, resize_to=0, validation_fraction=0.2, split_seed=0,
            num_shards=0, readers=1, quality=90, tfds_data_dir="", workers=8,
            synthetic_examples=(2048, 512), synthetic_size=256):
  """Writes `source` as sharded TFRecords plus manifest.json under `out`.

  Returns:
    The manifest dict.

  Raises:
    UserError: bad source, or no usable image at all.
  """
  kind, _, argument = source.partition(":")
  if kind == "folder":
    class_names, splits, bytes_per_image = folder_source(
        argument, validation_fraction, split_seed)
  elif kind == "tfds":
    class_names, splits, bytes_per_image = tfds_source(
        argument, tfds_data_dir, validation_fraction)
  elif kind == "synthetic":
    class_names, splits, bytes_per_image = synthetic_source(*synthetic_examples,
                                                             synthetic_size)
  else:
    raise UserError(f"--source={source!r}: expected tfds:NAME, folder:PATH or "
                    "synthetic")
  if resize_to:
    # A JPEG's size scales roughly with its pixel count.
    bytes_per_image = min(bytes_per_image, 0.35 * resize_to * resize_to * 4 / 3)
  tf.io.gfile.makedirs(out)
  skipped, sizes, manifest_splits = [], [], {}
  for split, items in splits.items():
    if not items:
      continue
    count = num_shards or choose_num_shards(len(items), bytes_per_image, readers)
    count = min(count, len(items))
    shards = write_split(out, split, items, count, resize_to, quality, workers,
                         skipped, sizes)
    per_class = collections.Counter()
    skipped_here = {s["file"] for s in skipped}
    for item in items:
      if item.name not in skipped_here:
        per_class[class_names[item.label]] += 1
    manifest_splits[split] = {
        "num_examples": sum(s["num_examples"] for s in shards),
        "per_class": dict(per_class), "shards": shards,
        "pattern": f"{split}-*-of-{count:05d}"}
  total = sum(s["num_examples"] for s in manifest_splits.values())
  reasons = collections.Counter(s["reason"] for s in skipped)
  manifest = {
      "source": source, "class_names": class_names, "schema": "imagenet",
      "features": {"image/encoded": "JPEG bytes", "image/class/label": "int64",
                   "image/format": "bytes", "image/height": "int64",
                   "image/width": "int64"},
      "resize_to": resize_to, "split_seed": split_seed,
      "validation_fraction": validation_fraction,
      "splits": manifest_splits, "image_size": _size_stats(sizes),
      "skipped": {"count": len(skipped), "by_reason": dict(reasons),
                  "files": skipped[:MAX_LISTED_SKIPS]},
  }
  if total == 0:
    raise UserError(f"--source={source}: no usable images "
                    f"({len(skipped)} skipped: {dict(reasons)})")
  records.write_manifest(out, manifest)
  return manifest


# ----------------------------------------------------------------------------
# CLI.

FLAGS = flags.FLAGS
flags.DEFINE_string("source", None, "tfds:NAME, folder:PATH or synthetic.")
flags.DEFINE_string("out", None, "Output directory, local or gs://.")
flags.DEFINE_integer("resize_to", 0, "Resize so the shorter side is at most N "
                     "px and re-encode as JPEG (0 = keep sizes).")
flags.DEFINE_float("validation_fraction", 0.2, "Validation share when the "
                   "source has no validation split.")
flags.DEFINE_integer("split_seed", 0, "Seed of the validation split.")
flags.DEFINE_integer("num_shards", 0, "Shards per split (0 = ~150 MB each, "
                     "at least 10 per reader).")
flags.DEFINE_integer("readers", 1, "Input pipelines (workers/hosts) that will "
                     "read the data; sets the minimum shard count.")
flags.DEFINE_integer("jpeg_quality", 90, "Quality of re-encoded JPEGs.")
flags.DEFINE_string("tfds_data_dir", "", "TFDS data dir (may be gs://).")
flags.DEFINE_integer("workers", 8, "Decode/encode threads.")
flags.DEFINE_list("synthetic_examples", ["2048", "512"], "Train,validation "
                  "sizes for --source=synthetic.")
flags.DEFINE_integer("synthetic_size", 256, "Image side for --source=synthetic.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}", exitcode=2)
  if not FLAGS.source or not FLAGS.out:
    raise app.UsageError("--source and --out are required", exitcode=2)
  try:
    manifest = prepare(FLAGS.source, FLAGS.out, FLAGS.resize_to,
                       FLAGS.validation_fraction, FLAGS.split_seed,
                       FLAGS.num_shards, FLAGS.readers, FLAGS.jpeg_quality,
                       FLAGS.tfds_data_dir, FLAGS.workers,
                       tuple(int(n) for n in FLAGS.synthetic_examples),
                       FLAGS.synthetic_size)
  except UserError as e:
    print(f"Error: {e}", file=sys.stderr)
    return 1
  for split, info in manifest["splits"].items():
    print(f"{split}: {info['num_examples']} images in {len(info['shards'])} "
          f"shards {info['per_class']}")
  skipped = manifest["skipped"]
  if skipped["count"]:
    print(f"Skipped {skipped['count']} unreadable file(s): "
          f"{skipped['by_reason']} (listed in manifest.json)")
  print(f"Wrote {os.path.join(FLAGS.out, records.MANIFEST)}")
  return 0


if __name__ == "__main__":
  app.run(main)
