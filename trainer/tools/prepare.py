"""Turn image collections into sharded TFRecords: python -m trainer.prepare

    python -m trainer.prepare --source=tfds:cats_vs_dogs --out=gs://my-bucket/cats_vs_dogs
    python -m trainer.prepare --source=folder:~/Downloads/PetImages --out=data/pets --resize_to=256
    python -m trainer.prepare --source=synthetic --out=data/stripes

Sources:
  tfds:NAME      any TFDS image-classification dataset (`--tfds_data_dir` may be
                 gs://). Without a validation split, `train[:80%]` /
                 `train[80%:]` (the seed's split; `--validation_fraction`).
                 Streamed: memory does not grow with the dataset. TFDS
                 shuffled the examples when it built the dataset; its files
                 are read in an order drawn from `--split_seed`.
  folder:PATH    one sub-folder per class (PetImages/Cat/*.jpg), or a flat
                 folder whose file names carry the class (cat.123.jpg).
                 The validation split is drawn per class from `--split_seed`,
                 then each split is shuffled across classes from the same
                 seed, so every shard holds every class.
  synthetic      the built-in stripes set.

Every image is fully decoded with Pillow; PNG, BMP, GIF, CMYK, grayscale and
anything TensorFlow's JPEG decoder rejects is re-encoded as RGB JPEG; files no
decoder reads are skipped, counted and listed in the manifest. Shards are
written under temporary names and renamed when complete, so re-running after
a crash finishes the job. The exit status is non-zero only when nothing usable
was found.
"""

import collections
from collections.abc import Iterable
import concurrent.futures
import dataclasses
import io
import itertools
import math
import os
import random
import sys
import warnings

from absl import app
from absl import flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
# Imports TensorFlow without its CUDA-probe and oneDNN start-up notices, so
# the command prints the same on every CPU kind.
from trainer import startup

startup.start_tensorflow()

from PIL import Image
import tensorflow as tf

from trainer import records
from trainer import shards
from trainer.errors import UserError
from trainer.errors import describe

IMAGE_EXTENSIONS = (
  ".jpg",
  ".jpeg",
  ".png",
  ".bmp",
  ".gif",
  ".webp",
  ".tif",
  ".tiff",
)
TARGET_SHARD_BYTES = 150 << 20  # Middle of the 100-200 MB sweet spot for GCS.
MAX_LISTED_SKIPS = 1000


@dataclasses.dataclass(frozen=True)
class Item:
  """One image to write: where its bytes come from and its label."""

  name: str  # a path, "tfds:<tfds_id>" or "synthetic:<split>:<index>"
  label: int
  encoded: bytes = b""  # set for in-memory sources (TFDS, synthetic)


@dataclasses.dataclass(frozen=True)
class Split:
  """The items of one split, in the order they are written."""

  num_items: int
  items: Iterable[Item]  # a list, or a one-pass stream (TFDS, synthetic)


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
    except (
      OSError,
      SyntaxError,
      ValueError,
      Image.DecompressionBombError,
    ) as e:
      reason = str(e).split(" (")[0] or type(e).__name__
      if "cannot identify image file" in reason:
        reason = "not an image"
      raise ValueError(reason) from None
  needs_resize = resize_to and min(image.size) > resize_to
  if (
    source_format == "JPEG"
    and image.mode == "RGB"
    and not needs_resize
    and _tf_can_decode_jpeg(encoded)
  ):
    return encoded, image.height, image.width
  if image.mode != "RGB":
    if image.mode in ("RGBA", "LA") or (
      image.mode == "P" and "transparency" in image.info
    ):
      # Composite transparency onto white rather than black.
      rgba = image.convert("RGBA")
      image = Image.new("RGB", image.size, (255, 255, 255))
      image.paste(rgba, mask=rgba.split()[3])
    else:
      image = image.convert("RGB")
  if needs_resize:
    scale = resize_to / min(image.size)
    image = image.resize(
      (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
      Image.Resampling.BILINEAR,
      reducing_gap=2.0,
    )
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
    return Converted(
      item.name, item.label, skip_reason=str(e) or type(e).__name__
    )


# ----------------------------------------------------------------------------
# Sources: each returns (class_names, {split: Split}, estimated bytes/image).


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
  # One listing per directory (on gs:// a call per file is a round trip).
  entries, subdirs = shards.list_directory(path)
  by_class = collections.defaultdict(list)
  if subdirs:
    for class_name in subdirs:
      directory = os.path.join(path, class_name)
      # Every file is a candidate: a misnamed or non-image file is skipped
      # with a reason, not silently ignored.
      for name in shards.list_directory(directory)[0]:
        by_class[class_name].append(os.path.join(directory, name))
  else:
    for name in entries:
      if _is_image(name) and _label_from_filename(name):
        by_class[_label_from_filename(name)].append(os.path.join(path, name))
  if len(by_class) < 2:
    raise UserError(
      f"--source=folder:{path}: found {len(by_class)} class(es); "
      "expected one sub-folder per class (Cat/, Dog/) or file "
      "names that start with the class (cat.1.jpg, dog.2.jpg)"
    )
  class_names = sorted(by_class)
  splits = {"train": [], "validation": []}
  rng = random.Random(split_seed)
  for label, class_name in enumerate(class_names):
    files = list(by_class[class_name])
    rng.shuffle(files)  # Stratified, seeded: the same split on every run.
    num_validation = int(round(len(files) * validation_fraction))
    splits["validation"] += [Item(f, label) for f in files[:num_validation]]
    splits["train"] += [Item(f, label) for f in files[num_validation:]]
  for items in splits.values():
    # Across classes, so every shard holds every class; seeded, so a re-run
    # after a crash writes the same examples to the same shards.
    rng.shuffle(items)
  sizes = [tf.io.gfile.stat(i.name).length for i in splits["train"][:200]]
  return (
    class_names,
    {split: Split(len(items), items) for split, items in splits.items()},
    sum(sizes) / max(1, len(sizes)),
  )


def _num_examples(dataset):
  count = int(dataset.cardinality())
  if count == tf.data.UNKNOWN_CARDINALITY:  # Count by reading; nothing is kept.
    count = int(dataset.reduce(0, lambda n, _: n + 1))
  return count


def tfds_source(name, data_dir, validation_fraction, split_seed):
  import tensorflow_datasets as tfds

  builder = tfds.builder(name, data_dir=data_dir or None)
  builder.download_and_prepare()
  info = builder.info
  image_keys = [
    k for k, v in info.features.items() if isinstance(v, tfds.features.Image)
  ]
  label_keys = [
    k
    for k, v in info.features.items()
    if isinstance(v, tfds.features.ClassLabel)
  ]
  if not image_keys or not label_keys:
    raise UserError(
      f"--source=tfds:{name}: not an image-classification "
      f"dataset (features: {list(info.features)})"
    )
  image_key, label_key = image_keys[0], label_keys[0]
  available = set(info.splits)
  validation_split = next(
    (s for s in ("validation", "test") if s in available), None
  )
  if validation_split:
    split_specs = {"train": "train", "validation": validation_split}
  else:
    cut = int(round(100 * (1 - validation_fraction)))
    split_specs = {"train": f"train[:{cut}%]", "validation": f"train[{cut}%:]"}
  # TFDS shuffled the examples across its files when it built the dataset
  # (unless the dataset is ordered, which forbids shuffling files); reading
  # the files in a seeded order keeps the output reproducible for re-runs.
  read_config = tfds.ReadConfig(shuffle_seed=split_seed, add_tfds_id=True)

  def read(spec):
    return builder.as_dataset(
      split=spec,
      shuffle_files=not info.disable_shuffling,
      read_config=read_config,
      decoders={image_key: tfds.decode.SkipDecoding()},
    )

  def stream(spec):
    # One example at a time: memory does not grow with the split.
    for example in read(spec).as_numpy_iterator():
      yield Item(
        f"tfds:{example['tfds_id'].decode()}",
        int(example[label_key]),
        example[image_key],
      )

  splits = {
    split: Split(_num_examples(read(spec)), stream(spec))
    for split, spec in split_specs.items()
  }
  sample = [
    len(example[image_key])
    for example in read(split_specs["train"]).take(200).as_numpy_iterator()
  ]
  return (
    list(info.features[label_key].names),
    splits,
    sum(sample) / max(1, len(sample)),
  )


def synthetic_source(train_examples, eval_examples, size):
  import numpy as np

  from trainer import synthetic

  def draw(split, count, seed):  # Classes alternate: no shuffle needed.
    rng = np.random.default_rng(seed)
    for i in range(count):
      encoded = synthetic.encode_jpeg(synthetic.draw_image(rng, i % 2, size))
      yield Item(f"synthetic:{split}:{i}", i % 2, encoded)

  splits = {
    split: Split(count, draw(split, count, seed))
    for split, count, seed in (
      ("train", train_examples, 0),
      ("validation", eval_examples, 1),
    )
  }
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
      sys.stderr.write(
        f"\r{self.label} [{'=' * filled}{' ' * (width - filled)}]"
        f" {self.done}/{self.total}"
      )
      if self.done >= self.total:
        sys.stderr.write("\n")
    elif percent // 10 != self._last_percent // 10:
      print(f"{self.label}: {self.done}/{self.total} images", file=sys.stderr)
    self._last_percent = percent
    sys.stderr.flush()


class _Tally:
  """Sizes and skips over all splits, in memory that does not grow with them."""

  def __init__(self):
    self.heights, self.widths = collections.Counter(), collections.Counter()
    self.skip_reasons = collections.Counter()
    self.listed_skips = []  # The first MAX_LISTED_SKIPS.

  def add_image(self, height, width):
    self.heights[height] += 1
    self.widths[width] += 1

  def add_skip(self, name, reason):
    self.skip_reasons[reason] += 1
    if len(self.listed_skips) < MAX_LISTED_SKIPS:
      self.listed_skips.append({"file": name, "reason": reason})


def _in_order(pool, function, items, window):
  """`pool.map` over a stream, with at most `window` items in flight."""
  pending = collections.deque()
  for item in items:
    pending.append(pool.submit(function, item))
    if len(pending) >= window:
      yield pending.popleft().result()
  while pending:
    yield pending.popleft().result()


def write_split(
  out, split_name, split, num_shards, resize_to, quality, workers, tally
):
  """Converts and writes one split, streaming.

  Args:
    out: output directory.
    split_name: "train" or "validation".
    split: its `Split`, read once, in order.
    num_shards: shards to write; sizes differ by at most one item.
    resize_to, quality, workers: as for `prepare`.
    tally: the `_Tally` to add sizes and skips to.

  Returns:
    (shard entries, Counter of labels written).
  """
  written_shards, labels = [], collections.Counter()
  progress = _Progress(split.num_items, split_name)
  items = iter(split.items)

  def serialize(converted_items):
    for converted in converted_items:
      if converted.skip_reason:
        tally.add_skip(converted.name, converted.skip_reason)
        continue
      tally.add_image(converted.height, converted.width)
      labels[converted.label] += 1
      # Deterministic: the feature map's order would otherwise vary with the
      # process's hash seed, and re-runs should write identical bytes.
      yield records.image_example(
        converted.encoded, converted.label, converted.height, converted.width
      ).SerializeToString(deterministic=True)

  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for index in range(num_shards):
      count = (
        index + 1
      ) * split.num_items // num_shards - index * split.num_items // num_shards
      chunk = itertools.islice(items, count)
      name = records.shard_name(split_name, index, num_shards)
      path = os.path.join(out, name)
      if tf.io.gfile.exists(path):
        # Complete from an earlier run (shards only appear when whole): pass
        # over its items, and count what it holds.
        collections.deque(chunk, maxlen=0)
        num_examples = 0
        for label, height, width in records.read_labels_and_sizes(path):
          labels[label] += 1
          tally.add_image(height, width)
          num_examples += 1
        written_shards.append(
          {"file": name, "num_examples": num_examples, "resumed": True}
        )
      else:
        converted = _in_order(
          pool,
          lambda i: _convert(i, resize_to, quality),
          chunk,
          window=2 * workers,
        )
        written = records.write_shard(path, serialize(converted))
        written_shards.append({"file": name, "num_examples": written})
      progress.add(count)
  return written_shards, labels


def _size_stats(counts):
  """min/max/mean/median of a Counter {size: number of images}."""
  total = sum(counts.values())
  sizes = sorted(counts)
  seen, median = 0, sizes[-1]
  for size in sizes:
    seen += counts[size]
    if seen > total // 2:
      median = size
      break
  return {
    "min": sizes[0],
    "max": sizes[-1],
    "mean": round(sum(s * n for s, n in counts.items()) / total, 1),
    "median": median,
  }


def prepare(
  source,
  out,
  resize_to=0,
  validation_fraction=0.2,
  split_seed=0,
  num_shards=0,
  readers=1,
  quality=90,
  tfds_data_dir="",
  workers=8,
  synthetic_examples=(2048, 512),
  synthetic_size=256,
):
  """Writes `source` as sharded TFRecords plus manifest.json under `out`.

  Returns:
    The manifest dict.

  Raises:
    UserError: bad source, or no usable image at all.
  """
  kind, _, argument = source.partition(":")
  if kind == "folder":
    class_names, splits, bytes_per_image = folder_source(
      argument, validation_fraction, split_seed
    )
  elif kind == "tfds":
    class_names, splits, bytes_per_image = tfds_source(
      argument, tfds_data_dir, validation_fraction, split_seed
    )
  elif kind == "synthetic":
    class_names, splits, bytes_per_image = synthetic_source(
      *synthetic_examples, synthetic_size
    )
  else:
    raise UserError(
      f"--source={source!r}: expected tfds:NAME, folder:PATH or synthetic"
    )
  if resize_to:
    # A JPEG's size scales roughly with its pixel count.
    bytes_per_image = min(bytes_per_image, 0.35 * resize_to * resize_to * 4 / 3)
  tf.io.gfile.makedirs(out)
  tally, manifest_splits = _Tally(), {}
  for split_name, split in splits.items():
    if not split.num_items:
      continue
    count = num_shards or choose_num_shards(
      split.num_items, bytes_per_image, readers
    )
    count = min(count, split.num_items)
    split_shards, labels = write_split(
      out, split_name, split, count, resize_to, quality, workers, tally
    )
    manifest_splits[split_name] = {
      "num_examples": sum(s["num_examples"] for s in split_shards),
      "per_class": {
        class_names[label]: n for label, n in sorted(labels.items())
      },
      "shards": split_shards,
      "pattern": f"{split_name}-*-of-{count:05d}",
    }
  total = sum(s["num_examples"] for s in manifest_splits.values())
  num_skipped = sum(tally.skip_reasons.values())
  manifest = {
    "source": source,
    "class_names": class_names,
    "schema": "imagenet",
    "features": {
      "image/encoded": "JPEG bytes",
      "image/class/label": "int64",
      "image/format": "bytes",
      "image/height": "int64",
      "image/width": "int64",
    },
    "resize_to": resize_to,
    "split_seed": split_seed,
    "validation_fraction": validation_fraction,
    "splits": manifest_splits,
    "image_size": (
      {"height": _size_stats(tally.heights), "width": _size_stats(tally.widths)}
      if tally.heights
      else {}
    ),
    "skipped": {
      "count": num_skipped,
      "by_reason": dict(tally.skip_reasons),
      "files": tally.listed_skips,
    },
  }
  if total == 0:
    raise UserError(
      f"--source={source}: no usable images "
      f"({num_skipped} skipped: {dict(tally.skip_reasons)})"
    )
  # Counts a run wrote beside an earlier set here are no longer this set's.
  stale = os.path.join(out, shards.COUNTS_SIDECAR)
  if tf.io.gfile.exists(stale):
    tf.io.gfile.remove(stale)
  records.write_manifest(out, manifest)
  return manifest


# ----------------------------------------------------------------------------
# CLI.

FLAGS = flags.FLAGS
flags.DEFINE_string("source", None, "tfds:NAME, folder:PATH or synthetic.")
flags.DEFINE_string("out", None, "Output directory, local or gs://.")
flags.DEFINE_integer(
  "resize_to",
  0,
  "Resize so the shorter side is at most N "
  "px and re-encode as JPEG (0 = keep sizes).",
)
flags.DEFINE_float(
  "validation_fraction",
  0.2,
  "Validation share when the source has no validation split.",
)
flags.DEFINE_integer(
  "split_seed",
  0,
  "Seed of the validation split and of the order examples are written in.",
)
flags.DEFINE_integer(
  "num_shards",
  0,
  "Shards per split (0 = ~150 MB each, at least 10 per reader).",
)
flags.DEFINE_integer(
  "readers",
  1,
  "Input pipelines (workers/hosts) that will "
  "read the data; sets the minimum shard count.",
)
flags.DEFINE_integer("jpeg_quality", 90, "Quality of re-encoded JPEGs.")
flags.DEFINE_string("tfds_data_dir", "", "TFDS data dir (may be gs://).")
flags.DEFINE_integer("workers", 8, "Decode/encode threads.")
flags.DEFINE_list(
  "synthetic_examples",
  ["2048", "512"],
  "Train,validation sizes for --source=synthetic.",
)
flags.DEFINE_integer(
  "synthetic_size", 256, "Image side for --source=synthetic."
)
flags.DEFINE_string(
  "index",
  "",
  "Instead of preparing: count the records of existing shards (a pattern, "
  "local or gs://) and write record_counts.json beside them, so no run "
  "counts them again.",
)
flags.DEFINE_string(
  "verify",
  "",
  "Instead of preparing: read existing shards (a pattern) through and "
  "list the damaged ones, their problem and readable records; exit 1 if any.",
)


def index(pattern):
  """Counts the shards of `pattern` and writes their counts beside them."""
  files = shards.list_files(pattern, "index")
  try:
    counts = shards.count_each(files)
  except tf.errors.DataLossError as e:
    raise UserError(
      f"--index={pattern!r}: a file is damaged ({describe(e)}); "
      f"python -m trainer.prepare --verify={pattern!r} lists which"
    ) from None
  path = shards.write_counts_beside(files, counts)
  if path is None:
    raise UserError(f"--index={pattern!r}: cannot write beside the files")
  return f"{sum(counts)} records in {len(files)} files: wrote {path}"


def verify(pattern):
  """The lines --verify prints, and whether every file is whole."""
  results = shards.verify_files(shards.list_files(pattern, "verify"))
  damaged = [(f, n, problem) for f, n, problem in results if problem]
  lines = [
    f"damaged: {f} ({problem}); {n} readable records"
    for f, n, problem in damaged
  ]
  lines.append(
    f"{len(results)} files, {sum(n for _, n, _ in results)} readable "
    f"records, {len(damaged)} damaged"
  )
  return lines, not damaged


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}", exitcode=2)
  try:
    if FLAGS.index:
      print(index(FLAGS.index))
      return 0
    if FLAGS.verify:
      lines, whole = verify(FLAGS.verify)
      print("\n".join(lines))
      return 0 if whole else 1
  except UserError as e:
    print(f"Error: {e}", file=sys.stderr)
    return 1
  if not FLAGS.source or not FLAGS.out:
    raise app.UsageError("--source and --out are required", exitcode=2)
  try:
    manifest = prepare(
      FLAGS.source,
      FLAGS.out,
      FLAGS.resize_to,
      FLAGS.validation_fraction,
      FLAGS.split_seed,
      FLAGS.num_shards,
      FLAGS.readers,
      FLAGS.jpeg_quality,
      FLAGS.tfds_data_dir,
      FLAGS.workers,
      tuple(int(n) for n in FLAGS.synthetic_examples),
      FLAGS.synthetic_size,
    )
  except UserError as e:
    print(f"Error: {e}", file=sys.stderr)
    return 1
  for split, info in manifest["splits"].items():
    print(
      f"{split}: {info['num_examples']} images in {len(info['shards'])} "
      f"shards{_per_class_line(info['per_class'])}"
    )
  skipped = manifest["skipped"]
  if skipped["count"]:
    print(
      f"Skipped {skipped['count']} unreadable file(s): "
      f"{skipped['by_reason']} (listed in manifest.json)"
    )
  print(f"Wrote {os.path.join(FLAGS.out, records.MANIFEST)}")
  return 0


# Above this many classes a split's counts are summarised on stdout (the
# manifest has them all): ImageNet's would be one 18 KB line.
PRINTED_CLASSES = 20


def _per_class_line(per_class):
  if len(per_class) <= PRINTED_CLASSES:
    return f" {per_class}"
  fewest = min(per_class, key=per_class.get)
  most = max(per_class, key=per_class.get)
  return (
    f", {len(per_class)} classes, {per_class[fewest]}-{per_class[most]} images "
    f"each (fewest: {fewest}, most: {most})"
  )


if __name__ == "__main__":
  app.run(main)
