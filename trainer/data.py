"""Turns TFRecord file patterns into per-replica `tf.data` pipelines.

Called from `strategy.distribute_datasets_from_function`: each input pipeline
(one per worker, or per host on TPU) builds its own dataset from an
`InputContext`, reads a disjoint part of the data and yields per-replica
batches of uint8 images (normalisation happens in the model, on the device);
for TPUs the batches are cast on the host to dtypes TPUs take.

Training order is a pure function of (seed, epoch): files are shuffled per
epoch and read in segments of a few files, records are shuffled as encoded
bytes within their segment, and augmentation draws its randomness from
(seed, epoch, position, pipeline). With --deterministic the order is fixed
too, so a resume starts at the segment holding its place, skips the records
already consumed there, and continues the run exactly (see EpochPlan).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os

import tensorflow as tf

from trainer import augment as augment_lib
from trainer import config as config_lib
from trainer import records
from trainer import shards
from trainer import synthetic
from trainer.errors import UserError
from trainer.errors import describe

log = logging.getLogger(__name__)

SCHEMA_KEYS = {
  # schema: (encoded image key, label key)
  "imagenet": ("image/encoded", "image/class/label"),
  "tfds": ("image", "label"),
}
EVAL_CROP_FRACTION = (
  0.875  # Centre crop for evaluation, as in Inception/ResNet.
)
MIN_CROP_AREA = 0.25  # Random-resized-crop area range (0.25, 1).


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """What the pipelines need to know, resolved once per run."""

  files: tuple
  num_examples: int
  schema: str
  image_size: int
  num_classes: int
  label_offset: int = 0
  augment: str = "random_resized_crop"
  shuffle_buffer: int = 2048
  seed: int = 42
  deterministic: bool = False
  skip_corrupt: bool = False
  data_service: str = ""  # grpc://HOST:PORT of a tf.data dispatcher
  job_name: str = "alexnet"  # shared by every consumer of one run
  device_dtypes: bool = False  # cast batches for TPUs (see to_device_dtypes)
  randaugment_magnitude: int = 9
  pca_lighting: float = 0.0  # std of the paper's colour augmentation
  # Records per file (same order as `files`); () when --train_examples was
  # given and nothing records them (a resume then reads up to its place).
  file_counts: tuple = ()
  shards_per_segment: int = 16  # see plan_epoch


def detect_schema(path):
  """'imagenet' or 'tfds', read from the keys of the first record in `path`."""
  try:
    first = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
  except tf.errors.OpError as e:
    raise UserError(
      f"{path}: not a readable TFRecord file ({describe(e)})"
    ) from None
  if first is None:
    raise UserError(f"{path}: empty TFRecord file; cannot detect the schema")
  example = tf.train.Example.FromString(first.numpy())
  keys = set(example.features.feature)
  for schema, (image_key, label_key) in SCHEMA_KEYS.items():
    if image_key in keys and label_key in keys:
      return schema
  raise UserError(
    f"{path}: unknown record layout with keys {sorted(keys)}; "
    f"expected {list(SCHEMA_KEYS['imagenet'])} or "
    f"{list(SCHEMA_KEYS['tfds'])}"
  )


def class_names(files, num_classes):
  """Names from the manifest beside the files, else "0", "1", ..."""
  manifest = records.read_manifest(os.path.dirname(files[0])) or {}
  names = manifest.get("class_names")
  if names and len(names) == max(2, num_classes):
    return tuple(names)
  return tuple(str(i) for i in range(max(2, num_classes)))


def make_input_spec(
  pattern: str,
  flag_name: str,
  config: config_lib.Config,
  image_size: int,
  num_examples: int = 0,
  counts_path: str | None = None,
  remember_counts: bool = False,
  wait_for_chief: bool = False,
) -> InputSpec:
  """The InputSpec of `pattern`; `num_examples` 0 = count (see count_records)."""
  files = shards.list_files(pattern, flag_name)
  schema = config.schema if config.schema != "auto" else detect_schema(files[0])
  if num_examples:  # Given: read nothing to count.
    file_counts = shards.known_counts(files, counts_path) or ()
  else:
    file_counts = shards.count_records(
      files,
      counts_path,
      remember_counts,
      config.skip_corrupt,
      flag_name,
      wait_for_chief,
    )
    num_examples = sum(file_counts)
  return InputSpec(
    files=files,
    file_counts=file_counts,
    num_examples=num_examples,
    schema=schema,
    image_size=image_size,
    num_classes=config.num_classes,
    label_offset=config.label_offset,
    augment=config.augment,
    shuffle_buffer=config.shuffle_buffer,
    shards_per_segment=config.shards_per_segment,
    seed=config.seed,
    deterministic=config.deterministic,
    skip_corrupt=config.skip_corrupt,
    data_service=config.data_service,
    randaugment_magnitude=config.randaugment_magnitude,
    pca_lighting=config.pca_lighting,
  )


def resolve_input_specs(
  config: config_lib.Config,
  image_size: int,
  counts_path: str | None = None,
  remember_counts: bool = False,
  wait_for_chief: bool = False,
) -> tuple[InputSpec, InputSpec | None]:
  """(train InputSpec, eval InputSpec or None); the synthetic set by default.

  counts_path, remember_counts, wait_for_chief: where example counts are
  remembered, and who counts them (see count_records).
  """
  train_pattern, eval_pattern = config.train_data, config.eval_data
  if not train_pattern:
    train_pattern, synthetic_eval = synthetic.ensure_dataset(
      config.synthetic_dir,
      config.synthetic_train_examples,
      config.synthetic_eval_examples,
      image_size=int(round(image_size * 256 / 224)),
      seed=0,
    )
    eval_pattern = eval_pattern or (
      synthetic_eval if config.synthetic_eval_examples else ""
    )
    log.info(
      "No --train_data: using the built-in synthetic two-class set (%s).",
      os.path.dirname(train_pattern),
    )
  train_spec = make_input_spec(
    train_pattern,
    "train_data",
    config,
    image_size,
    config.train_examples,
    counts_path,
    remember_counts,
    wait_for_chief,
  )
  eval_spec = (
    make_input_spec(
      eval_pattern,
      "eval_data",
      config,
      image_size,
      config.eval_examples,
      counts_path,
      remember_counts,
      wait_for_chief,
    )
    if eval_pattern
    else None
  )
  return train_spec, eval_spec


def resolve_eval_spec(
  config: config_lib.Config, image_size: int, counts_path: str | None = None
) -> InputSpec:
  """The validation InputSpec of a run: its --eval_data, else the synthetic
  validation split when it trained on the synthetic set.

  counts_path: the run's remembered example counts (see count_records).

  Raises:
    UserError: the run has no validation data.
  """
  if config.eval_data:
    return make_input_spec(
      config.eval_data,
      "eval_data",
      config,
      image_size,
      config.eval_examples,
      counts_path=counts_path,
    )
  if not config.train_data:
    _, eval_spec = resolve_input_specs(
      config, image_size, counts_path=counts_path
    )
    if eval_spec:
      return eval_spec
  raise UserError("no evaluation data: pass --eval_data")


# ----------------------------------------------------------------------------
# Parsing and decoding (graph functions, run inside tf.data maps).


def _parse(serialized, spec):
  image_key, label_key = SCHEMA_KEYS[spec.schema]
  features = tf.io.parse_single_example(
    serialized,
    {
      image_key: tf.io.FixedLenFeature([], tf.string),
      label_key: tf.io.FixedLenFeature([], tf.int64),
    },
  )
  return features[image_key], features[label_key] - spec.label_offset


# Marks the label-range assertion so `label_error` can find it in the error
# TensorFlow raises from deep inside an iterator.
_LABEL_CHECK = "LABEL_OUT_OF_RANGE"


def _check_label(label, source_file, spec):
  """The label, or an error naming it, the file and the fix.

  Applied after --skip_corrupt's ignore_errors: a wrong label is a wrong
  flag or a wrong dataset, never a record to drop quietly.
  """
  num_labels = max(2, spec.num_classes)
  check = tf.debugging.Assert(
    tf.logical_and(label >= 0, label < num_labels),
    [_LABEL_CHECK, label, num_labels, spec.label_offset, source_file],
    summarize=1,
  )
  with tf.control_dependencies([check]):
    return tf.identity(label)


def label_error(error):
  """The one-line message for a label-range failure in `error`, or None."""
  import re

  match = re.search(
    re.escape(_LABEL_CHECK) + r"\] \[(-?\d+)\] \[(\d+)\] "
    r"\[(-?\d+)\] \[([^\]]*)\]",
    str(error),
  )
  if not match:
    return None
  label, num_labels, offset, source = match.groups()
  hint = (
    "labels that start at 1 need --label_offset=1"
    if offset == "0"
    else "check --label_offset and --num_classes"
  )
  return (
    f"label {label} outside [0, {num_labels}) in {source} (after "
    f"--label_offset={offset}); {hint}"
  )


def _image_shape(encoded):
  """(height, width) without decoding pixels, for JPEGs; else by decoding."""
  return tf.cond(
    tf.io.is_jpeg(encoded),
    lambda: tf.io.extract_jpeg_shape(encoded)[:2],
    lambda: tf.shape(
      tf.io.decode_image(encoded, channels=3, expand_animations=False)
    )[:2],
  )


def _decode_crop(encoded, crop_window):
  """Decodes only the crop window [y, x, h, w] (fused for JPEG)."""

  def decode_other():
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return tf.image.crop_to_bounding_box(
      image, crop_window[0], crop_window[1], crop_window[2], crop_window[3]
    )

  return tf.cond(
    tf.io.is_jpeg(encoded),
    lambda: tf.io.decode_and_crop_jpeg(encoded, crop_window, channels=3),
    decode_other,
  )


def _resize_uint8(image, size):
  image = tf.image.resize(image, [size, size], method="bilinear")
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _center_crop_window(shape, fraction):
  height, width = shape[0], shape[1]
  side = tf.cast(
    tf.cast(tf.minimum(height, width), tf.float32) * fraction, tf.int32
  )
  return tf.stack([(height - side) // 2, (width - side) // 2, side, side])


def decode_for_eval(encoded, image_size, augment):
  """Evaluation and serving preprocessing: a deterministic uint8 image."""
  if augment == "resize":
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return _resize_uint8(image, image_size)
  window = _center_crop_window(_image_shape(encoded), EVAL_CROP_FRACTION)
  image = _decode_crop(encoded, window)
  image.set_shape([None, None, 3])
  return _resize_uint8(image, image_size)


def decode_for_training(
  encoded, image_size, augment, seed, randaugment_magnitude=9, pca_lighting=0.0
):
  """Training preprocessing with stateless randomness from `seed` ([2] int).

  randaugment_magnitude: M of --augment=randaugment.
  pca_lighting: std of the paper's colour augmentation; 0 = off.
  """
  image = _decode_and_crop_for_training(
    encoded, image_size, augment, seed, randaugment_magnitude
  )
  if pca_lighting:
    image = augment_lib.pca_lighting(
      image, pca_lighting, tf.random.experimental.stateless_fold_in(seed, 3)
    )
  return image


def _decode_and_crop_for_training(
  encoded, image_size, augment, seed, randaugment_magnitude
):
  if augment == "resize":
    return decode_for_eval(encoded, image_size, augment)
  shape = _image_shape(encoded)
  if augment in ("random_resized_crop", "randaugment"):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.concat([shape, [3]], 0),
      bounding_boxes=tf.zeros([1, 0, 4]),
      seed=seed,
      min_object_covered=0.0,
      aspect_ratio_range=(3 / 4, 4 / 3),
      area_range=(MIN_CROP_AREA, 1.0),
      max_attempts=10,
      use_image_if_no_bounding_boxes=True,
    )
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    image = _decode_crop(encoded, window)
    image.set_shape([None, None, 3])
    image = _resize_uint8(image, image_size)
  else:  # crop_flip, the paper: shorter side to 256/224 * size, random crop.
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    scale_side = int(round(image_size * 256 / 224))
    shorter = tf.cast(tf.minimum(shape[0], shape[1]), tf.float32)
    new_shape = tf.cast(
      tf.round(tf.cast(shape, tf.float32) * scale_side / shorter), tf.int32
    )
    image = tf.image.resize(image, new_shape)
    image = tf.image.stateless_random_crop(
      image, [image_size, image_size, 3], seed=seed
    )
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  flip_seed = tf.random.experimental.stateless_fold_in(seed, 1)
  image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  if augment == "randaugment":
    image = augment_lib.randaugment(
      image,
      randaugment_magnitude,
      tf.random.experimental.stateless_fold_in(seed, 2),
    )
  return image


# ----------------------------------------------------------------------------
# Pipelines.

# TPU infeed takes no strings, and historically no uint8 or int64; Model
# Garden feeds bfloat16/float32 images and int32 labels. bfloat16 holds every
# integer 0..255 exactly (8 significant bits) at half of float32's bytes.
_DEVICE_DTYPES = {tf.uint8: tf.bfloat16, tf.int64: tf.int32}


def to_device_dtypes(*batch):
  """`batch` in dtypes a TPU accepts: images bfloat16, labels and counts int32.

  Done on the host, per batch, and only for TPUs: other strategies keep
  uint8 images on the host (a quarter of float32's memory traffic).
  """
  return tuple(tf.cast(t, _DEVICE_DTYPES.get(t.dtype, t.dtype)) for t in batch)


def for_strategy(spec, strategy_name):
  """`spec` as the strategy's devices take it: cast on the host for TPUs."""
  return dataclasses.replace(spec, device_dtypes=strategy_name == "tpu")


def _options(deterministic):
  options = tf.data.Options()
  options.deterministic = deterministic
  # Sharding is done here, per InputContext; tell tf.distribute not to try.
  options.experimental_distribute.auto_shard_policy = (
    tf.data.experimental.AutoShardPolicy.OFF
  )
  options.experimental_optimization.map_parallelization = True
  return options


def _records_with_source(num_pipelines, pipeline_id, by_file):
  """Reads one file as (record, file) pairs, this pipeline's part of it."""

  def read(path):
    dataset = tf.data.TFRecordDataset(path, buffer_size=8 << 20)
    if not by_file:
      dataset = dataset.shard(num_pipelines, pipeline_id)
    return dataset.map(lambda record: (record, path))

  return read


@dataclasses.dataclass(frozen=True)
class EpochPlan:
  """One input pipeline's reading order for one epoch.

  The pipeline's files, in an order drawn from (seed, epoch), are read in
  segments of `shards_per_segment` files; each segment is interleaved and
  shuffled on its own, so its shuffle buffer drains at its end and where a
  record lands depends only on its segment. A pipeline that needs more
  records than it holds (pipelines hold unequal shares) reads the segments
  again in the same order. Position p of the stream (records since the
  epoch began) therefore lies in a segment found from per-file counts
  alone, and a resume reads at most that one segment to get there.
  """

  segments: tuple  # of tuples of file paths, in reading order
  segment_records: tuple | None  # this pipeline's records per segment
  seed: int

  def start(self, position):
    """(segment, records to skip in it) where stream position `position`
    lies; without record counts (None): (None, position), the place found
    by reading the stream from its beginning."""
    if not position:
      return 0, 0
    if self.segment_records is None:
      return None, position
    position %= sum(self.segment_records)
    for index, records_in_segment in enumerate(self.segment_records):
      if position < records_in_segment:
        return index, position
      position -= records_in_segment
    raise AssertionError("unreachable: position < total")


def plan_epoch(spec, num_pipelines, pipeline_id, epoch):
  """This pipeline's EpochPlan (see there).

  Raises:
    UserError: the pipeline's part of the data holds no records.
  """
  files = list(spec.files)
  counts = list(spec.file_counts) or [0] * len(files)  # 0: not known
  if len(files) >= num_pipelines:  # By file: every pipeline gets one.
    files = files[pipeline_id::num_pipelines]
    counts = counts[pipeline_id::num_pipelines]
  else:  # By record: every pipeline reads every file's n-th records.
    counts = [
      n // num_pipelines + (pipeline_id < n % num_pipelines) for n in counts
    ]
  if spec.file_counts and not sum(counts):
    raise UserError(
      f"input pipeline {pipeline_id} of {num_pipelines} has no records: its "
      f"{len(files)} file(s) of --train_data are empty"
    )
  seed = _epoch_seed(spec, epoch)
  # A sort by a hash of (seed, name), not random.shuffle: the same order on
  # every Python version, so a resume after an upgrade reads the same files.
  order = sorted(
    range(len(files)),
    key=lambda i: hashlib.sha256(f"{seed}/{files[i]}".encode()).digest(),
  )
  size = spec.shards_per_segment or len(files)
  groups = [order[i : i + size] for i in range(0, len(order), size)]
  return EpochPlan(
    segments=tuple(tuple(files[i] for i in group) for group in groups),
    segment_records=tuple(sum(counts[i] for i in group) for group in groups)
    if spec.file_counts
    else None,
    seed=seed,
  )


def check_pipelines(spec, num_pipelines):
  """Every pipeline's plan, on every worker alike: a pipeline with no
  records is one line on all of them, not a hang on the others."""
  for pipeline_id in range(num_pipelines):
    plan_epoch(spec, num_pipelines, pipeline_id, 0)


def input_order(spec):
  """How a run reads its epochs, as config.json records it."""
  size = spec.shards_per_segment
  if not size:
    return "one segment per epoch"
  return f"segments of {size} file{'s' if size != 1 else ''}"


def _epoch_seed(spec, epoch):
  return spec.seed * 100_003 + epoch


def _planned_records(spec, plan, num_pipelines, pipeline_id, by_file, start):
  """(record, file) pairs in `plan`'s order from stream position `start`."""
  first_segment, skip = plan.start(start)
  width = max(len(files) for files in plan.segments)
  table = tf.constant(
    [list(files) + [""] * (width - len(files)) for files in plan.segments]
  )
  read = _records_with_source(num_pipelines, pipeline_id, by_file)
  # One seed for every segment of the epoch, a Python int (a tensor seed
  # fails TensorFlow's seed check when the global seed is 0): each
  # segment's buffer draws the same pattern over other records.
  shuffle_seed = (plan.seed * 1_000_003) % (2**31 - 1)

  def segment(index):
    files = table[index]
    files = tf.boolean_mask(files, tf.strings.length(files) > 0)
    stream = tf.data.Dataset.from_tensor_slices(files).interleave(
      read,
      cycle_length=min(width, 16),
      block_length=1,
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=spec.deterministic,
    )
    # Its own buffer, drained at its end.
    return stream.shuffle(spec.shuffle_buffer or 1, seed=shuffle_seed)

  def segments(first):
    # A range, not a counter: the tf.data service's dynamic sharding hands
    # its values (segments) to its workers, one each.
    return tf.data.Dataset.range(first, len(plan.segments)).flat_map(segment)

  every_pass = segments(0).repeat()  # Ends at once if the pipeline is empty.
  if first_segment is None:  # No counts: read up to the place.
    return every_pass.skip(skip)
  if not first_segment and not skip:
    return every_pass
  return segments(first_segment).skip(skip).concatenate(every_pass)


def make_train_dataset(
  spec: InputSpec,
  input_context: tf.distribute.InputContext,
  global_batch_size: int,
  epoch: int = 0,
  skip_records: int = 0,
) -> tf.data.Dataset:
  """One epoch's training stream for this input pipeline, repeated.

  Args:
    spec: InputSpec.
    input_context: tf.distribute.InputContext.
    global_batch_size: images per step over all replicas.
    epoch: seeds the file order, the shuffle and the augmentation.
    skip_records: records this pipeline already consumed this epoch (resume).

  Returns:
    A dataset of (uint8 images [b, s, s, 3], int64 labels [b], int64
    skipped [b]) per-replica batches with static shapes, where skipped
    counts the unreadable records dropped before each example (always 0
    without --skip_corrupt); it never ends (the loop takes
    steps_per_epoch batches), so pipelines with fewer records don't stall
    the others. With `spec.device_dtypes` (TPU): bfloat16 images, int32
    labels and counts.
  """
  pipelines = input_context.num_input_pipelines
  pipeline_id = input_context.input_pipeline_id
  batch_size = input_context.get_per_replica_batch_size(global_batch_size)
  if spec.data_service:
    # The service hands files to its workers dynamically and splits the
    # batches among all consumers: build the whole, unsharded stream.
    pipelines, pipeline_id, skip_records = 1, 0, 0
  by_file = len(spec.files) >= pipelines
  plan = plan_epoch(spec, pipelines, pipeline_id, epoch)
  dataset = _planned_records(
    spec, plan, pipelines, pipeline_id, by_file, skip_records
  )
  # Position-based seeds: an image's augmentation depends on where it is in
  # the epoch, not on which thread decoded it.
  dataset = dataset.enumerate(start=skip_records)

  def preprocess(position, record_and_source):
    record, source = record_and_source
    encoded, label = _parse(record, spec)
    # Each pipeline draws its own crops: the same position in two pipelines
    # (or workers) is a different image and must not get the same crop.
    seed = tf.random.experimental.stateless_fold_in(
      tf.stack([tf.cast(plan.seed, tf.int64), position]), pipeline_id
    )
    image = decode_for_training(
      encoded,
      spec.image_size,
      spec.augment,
      seed,
      spec.randaugment_magnitude,
      spec.pca_lighting,
    )
    return image, label, position, source

  # Skipping needs positions in order to count the gaps it leaves.
  dataset = dataset.map(
    preprocess,
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=spec.deterministic or spec.skip_corrupt,
  )
  if spec.skip_corrupt:
    dataset = dataset.ignore_errors()
  dataset = dataset.map(
    lambda image, label, position, source: (
      image,
      _check_label(label, source, spec),
      position,
    )
  )

  def count_skipped(last_position, element):
    image, label, position = element
    return position, (image, label, position - last_position - 1)

  # Each element carries how many records were skipped just before it.
  dataset = dataset.scan(tf.constant(skip_records - 1, tf.int64), count_skipped)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  if spec.data_service:
    dataset = dataset.apply(
      tf.data.experimental.service.distribute(
        processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC,
        service=spec.data_service,
        job_name=f"{spec.job_name}-epoch{epoch}",
      )
    )
  if spec.device_dtypes:  # After the service: it still ships uint8.
    dataset = dataset.map(to_device_dtypes)
  return dataset.prefetch(tf.data.AUTOTUNE).with_options(
    _options(spec.deterministic)
  )


def eval_steps(
  num_examples: int,
  num_pipelines: int,
  num_replicas: int,
  per_replica_batch_size: int,
) -> int:
  """Steps that cover every pipeline's share of an eval set exactly once."""
  per_pipeline = -(-num_examples // num_pipelines)
  replicas_per_pipeline = num_replicas // num_pipelines
  batches = -(-per_pipeline // per_replica_batch_size)
  return -(-batches // replicas_per_pipeline)


def make_eval_dataset(
  spec: InputSpec,
  input_context: tf.distribute.InputContext,
  global_batch_size: int,
  steps: int,
) -> tf.data.Dataset:
  """Every example of `spec` exactly once, padded with weight-0 examples.

  Records are sharded by position over all files read in a fixed order, so
  pipeline i holds examples i, i+P, ...; padding makes every pipeline yield
  exactly `steps` full batches per local replica, so no worker waits for
  another and none is dropped.

  Returns:
    A dataset of (images, labels, weights) per-replica batches: uint8, int64,
    float32; with `spec.device_dtypes` (TPU) bfloat16, int32, float32.
  """
  pipelines = input_context.num_input_pipelines
  batch_size = input_context.get_per_replica_batch_size(global_batch_size)
  replicas_per_pipeline = input_context.num_replicas_in_sync // pipelines
  dataset = tf.data.TFRecordDataset(
    list(spec.files), num_parallel_reads=4, buffer_size=8 << 20
  )
  dataset = dataset.shard(pipelines, input_context.input_pipeline_id)
  source = tf.constant(
    ",".join(os.path.basename(f) for f in spec.files[:3])
    + ("..." if len(spec.files) > 3 else "")
  )

  def preprocess(record):
    encoded, label = _parse(record, spec)
    image = decode_for_eval(encoded, spec.image_size, spec.augment)
    return image, label, tf.constant(1.0)

  dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  if spec.skip_corrupt:
    dataset = dataset.ignore_errors()
  dataset = dataset.map(
    lambda image, label, weight: (
      image,
      _check_label(label, source, spec),
      weight,
    )
  )
  padding = tf.data.Dataset.from_tensors(
    (
      tf.zeros([spec.image_size, spec.image_size, 3], tf.uint8),
      tf.constant(0, tf.int64),
      tf.constant(0.0),
    )
  ).repeat()
  dataset = dataset.concatenate(padding)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  dataset = dataset.take(steps * replicas_per_pipeline)
  if spec.device_dtypes:
    dataset = dataset.map(to_device_dtypes)
  return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options(False))
