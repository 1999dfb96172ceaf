"""The reader: schemas, sharding across pipelines, epoch order, exact eval."""

import dataclasses
import gc
import io
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from trainer import data
from trainer import records
from trainer import shards
from trainer.errors import UserError


def _jpeg(value, size=40):
  buffer = io.BytesIO()
  Image.fromarray(np.full((size, size + 8, 3), value, np.uint8)).save(
    buffer, format="JPEG"
  )
  return buffer.getvalue()


def _png(value, size=40):
  buffer = io.BytesIO()
  Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(
    buffer, format="PNG"
  )
  return buffer.getvalue()


def write_set(
  directory, num_files, per_file, schema="imagenet", label_fn=None, encode=_jpeg
):
  """Records whose pixel value encodes their global index (0..n-1)."""
  os.makedirs(directory, exist_ok=True)
  label_fn = label_fn or (lambda i: i % 2)
  index = 0
  for f in range(num_files):
    serialized = []
    for _ in range(per_file):
      encoded, label = encode(index), label_fn(index)
      if schema == "imagenet":
        example = records.image_example(encoded, label, 40, 48)
      else:
        example = tf.train.Example(
          features=tf.train.Features(
            feature={
              "image": tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[encoded])
              ),
              "label": tf.train.Feature(
                int64_list=tf.train.Int64List(value=[label])
              ),
            }
          )
        )
      serialized.append(example.SerializeToString())
      index += 1
    records.write_shard(
      os.path.join(directory, records.shard_name("train", f, num_files)),
      serialized,
    )
  return os.path.join(directory, "train-*")


def spec_for(pattern, **overrides):
  files = shards.list_files(pattern, "train_data")
  values = dict(
    files=files,
    num_examples=sum(shards.count_records(files)),
    file_counts=shards.count_records(files),
    schema=data.detect_schema(files[0]),
    image_size=16,
    num_classes=1,
    augment="resize",
    shuffle_buffer=64,
    seed=1,
    deterministic=True,
  )
  values.update(overrides)
  return data.InputSpec(**values)


def context(pipelines, pipeline_id, replicas=None):
  return tf.distribute.InputContext(
    pipelines, pipeline_id, replicas or pipelines
  )


def pixel_ids(dataset, batches):
  ids = []
  for images, *_ in dataset.take(batches):
    ids.extend(
      int(round(float(v)))
      for v in tf.reduce_mean(
        tf.cast(images, tf.float32), axis=[1, 2, 3]
      ).numpy()
    )
  return ids


@pytest.mark.parametrize("schema", ["imagenet", "tfds"])
def test_schema_detection_and_labels(tmp_path, schema):
  pattern = write_set(tmp_path / schema, 2, 4, schema=schema)
  spec = spec_for(pattern)
  assert spec.schema == schema and spec.num_examples == 8
  images, labels, skipped = next(
    iter(data.make_train_dataset(spec, context(1, 0), 4))
  )
  assert skipped.numpy().tolist() == [0, 0, 0, 0]
  assert images.dtype == tf.uint8 and images.shape == (4, 16, 16, 3)
  assert set(labels.numpy()) <= {0, 1}


@pytest.mark.parametrize("num_files", [4, 1])
def test_pipelines_read_disjoint_data(tmp_path, num_files):
  """By file with enough files, by record otherwise: never the same record twice."""
  per_file = 24 // num_files
  pattern = write_set(tmp_path / "d", num_files, per_file)
  spec = spec_for(pattern)
  seen = [
    pixel_ids(data.make_train_dataset(spec, context(2, i), 4), 6)
    for i in range(2)
  ]
  assert not set(seen[0]) & set(seen[1])
  assert set(seen[0]) | set(seen[1]) == set(range(24))


def test_file_order_changes_across_epochs_but_is_seeded(tmp_path):
  pattern = write_set(tmp_path / "d", 8, 4)
  spec = spec_for(pattern, shuffle_buffer=1)
  epoch0 = pixel_ids(
    data.make_train_dataset(spec, context(1, 0), 32, epoch=0), 1
  )
  epoch1 = pixel_ids(
    data.make_train_dataset(spec, context(1, 0), 32, epoch=1), 1
  )
  again0 = pixel_ids(
    data.make_train_dataset(spec, context(1, 0), 32, epoch=0), 1
  )
  assert sorted(epoch0) == sorted(epoch1) == list(range(32))
  assert epoch0 != epoch1 and epoch0 == again0


def test_skip_resumes_the_same_stream(tmp_path):
  pattern = write_set(tmp_path / "d", 4, 8)
  spec = spec_for(pattern, augment="random_resized_crop")
  full = pixel_ids(data.make_train_dataset(spec, context(1, 0), 4, epoch=3), 6)
  resumed = pixel_ids(
    data.make_train_dataset(spec, context(1, 0), 4, epoch=3, skip_records=8), 4
  )
  assert resumed == full[8:]


@pytest.mark.parametrize(
  "pipelines,replicas,batch", [(1, 1, 4), (2, 2, 6), (1, 3, 6), (4, 32, 32)]
)
def test_eval_covers_every_example_exactly_once(
  tmp_path, pipelines, replicas, batch
):
  pattern = write_set(tmp_path / "d", 3, 7)  # 21 examples: no batch divides it.
  spec = spec_for(pattern)
  steps = data.eval_steps(21, pipelines, replicas, batch // replicas)
  ids = []
  for p in range(pipelines):
    dataset = data.make_eval_dataset(
      spec, context(pipelines, p, replicas), batch, steps
    )
    batches = list(dataset)
    assert len(batches) == steps * (replicas // pipelines)
    for images, _, weights in batches:
      means = tf.reduce_mean(
        tf.cast(images, tf.float32), axis=[1, 2, 3]
      ).numpy()
      ids.extend(int(round(m)) for m, w in zip(means, weights.numpy()) if w > 0)
  assert sorted(ids) == list(range(21))


def test_png_records_decode_too(tmp_path):
  pattern = write_set(tmp_path / "png", 1, 4, encode=_png)
  spec = spec_for(pattern, augment="random_resized_crop")
  images, _, _ = next(iter(data.make_train_dataset(spec, context(1, 0), 4)))
  assert images.shape == (4, 16, 16, 3)


def test_label_out_of_range_names_label_and_file(tmp_path):
  pattern = write_set(tmp_path / "bad", 1, 4, label_fn=lambda i: 7)
  spec = spec_for(pattern)
  with pytest.raises(tf.errors.InvalidArgumentError) as raised:
    next(iter(data.make_train_dataset(spec, context(1, 0), 4)))
  assert data.label_error(raised.value) == (
    f"label 7 outside [0, 2) in {pattern[:-1]}00000-of-00001 (after "
    "--label_offset=0); labels that start at 1 need --label_offset=1"
  )


def test_skip_corrupt_never_drops_out_of_range_labels(tmp_path):
  pattern = write_set(
    tmp_path / "bad", 1, 8, label_fn=lambda i: 2 if i == 5 else 0
  )
  spec = spec_for(pattern, skip_corrupt=True)
  with pytest.raises(tf.errors.InvalidArgumentError) as raised:
    list(data.make_train_dataset(spec, context(1, 0), 4).take(2))
  assert "label 2 outside [0, 2)" in data.label_error(raised.value)
  eval_spec = spec_for(pattern, skip_corrupt=True)
  with pytest.raises(tf.errors.InvalidArgumentError) as raised:
    list(data.make_eval_dataset(eval_spec, context(1, 0), 4, steps=2))
  assert "label 2 outside [0, 2)" in data.label_error(raised.value)


def test_pipelines_draw_different_augmentations(tmp_path):
  """Every record holds the same image: position 0 of two pipelines must
  still be cropped differently (and identically when repeated)."""
  rng = np.random.default_rng(0)
  buffer = io.BytesIO()
  Image.fromarray(rng.integers(0, 255, (40, 48, 3), np.uint8)).save(
    buffer, format="PNG"
  )
  pattern = write_set(
    tmp_path / "same", 2, 4, encode=lambda i: buffer.getvalue()
  )
  spec = spec_for(pattern, augment="random_resized_crop", shuffle_buffer=1)

  def first_image(pipeline_id):
    images, _, _ = next(
      iter(data.make_train_dataset(spec, context(2, pipeline_id), 2))
    )
    return images[0].numpy()

  assert not np.array_equal(first_image(0), first_image(1))
  assert np.array_equal(first_image(1), first_image(1))


def test_label_offset(tmp_path):
  pattern = write_set(tmp_path / "offset", 1, 4, label_fn=lambda i: 1 + i % 2)
  spec = spec_for(pattern, label_offset=1)
  _, labels, _ = next(iter(data.make_train_dataset(spec, context(1, 0), 4)))
  assert sorted(labels.numpy()) == [0, 0, 1, 1]


def test_empty_pattern_names_flag_and_pattern(tmp_path):
  with pytest.raises(
    UserError, match=r"--eval_data='.*nothing-\*' matches no files"
  ):
    shards.list_files(str(tmp_path / "nothing-*"), "eval_data")


def test_temporary_shards_are_never_read(tmp_path):
  pattern = write_set(tmp_path / "d", 2, 2)
  (tmp_path / "d" / "train-00002-of-00003.tmp-1234").write_bytes(b"partial")
  assert len(shards.list_files(pattern, "train_data")) == 2


def test_skip_corrupt_skips_and_counts_undecodable_records(tmp_path):
  """Two records in 12 hold bytes no decoder reads."""

  def encode(index):
    return b"garbage, not an image" if index in (3, 7) else _jpeg(index)

  pattern = write_set(tmp_path / "bad", 1, 12, encode=encode)
  strict = spec_for(pattern, augment="random_resized_crop")
  with pytest.raises(tf.errors.InvalidArgumentError):
    list(data.make_train_dataset(strict, context(1, 0), 5).take(2))
  # File order (no shuffle) so both bad records fall within the first pass.
  lenient = spec_for(
    pattern,
    augment="random_resized_crop",
    skip_corrupt=True,
    deterministic=False,
    shuffle_buffer=1,
  )
  dataset = data.make_train_dataset(lenient, context(1, 0), 5)
  ids, skipped = [], 0
  for images, _, skipped_before in dataset.take(2):  # 10 good records
    ids.extend(
      int(round(float(v)))
      for v in tf.reduce_mean(
        tf.cast(images, tf.float32), axis=[1, 2, 3]
      ).numpy()
    )
    skipped += int(skipped_before.numpy().sum())
  assert sorted(ids) == sorted(set(range(12)) - {3, 7})
  assert skipped == 2


def test_counts_are_read_once_per_data_set(tmp_path):
  """No manifest: the first start counts and writes the counts beside the
  shards and in its model dir; any later start, in any model dir, reads
  them. Control: without either record the files are read again."""
  pattern = write_set(tmp_path / "plain", 2, 5)
  files = shards.list_files(pattern, "train_data")
  counts = str(tmp_path / "run" / "example_counts.json")
  assert shards.count_records(files, counts, remember=True) == (5, 5)
  assert (tmp_path / "plain" / shards.COUNTS_SIDECAR).exists()
  # Same names, other contents: a remembered count does not read them.
  for f in files:
    records.write_shard(f, [])
  assert shards.count_records(files, counts) == (5, 5)
  assert shards.count_records(files, str(tmp_path / "other" / "c.json")) == (
    5,
    5,
  )
  os.remove(tmp_path / "plain" / shards.COUNTS_SIDECAR)
  assert shards.count_records(files, counts) == (5, 5)  # the model dir's
  assert shards.count_records(files) == (0, 0)  # neither: read again


def test_a_worker_waits_for_the_chiefs_count(tmp_path):
  """The other workers of a cluster read no record: they take the count the
  chief writes."""
  import threading

  pattern = write_set(tmp_path / "plain", 2, 5)
  files = shards.list_files(pattern, "train_data")
  chief = threading.Timer(0.5, shards.write_counts_beside, (files, (7, 9)))
  chief.start()
  # (7, 9): the chief's (planted) figures, not what reading would find.
  assert shards.count_records(files, wait_for_chief=True) == (7, 9)
  chief.join()


def test_given_example_counts_skip_counting(tmp_path):
  import configs

  pattern = write_set(tmp_path / "given", 1, 6)
  for f in shards.list_files(pattern, "train_data"):
    records.write_shard(f, [])  # Counting would find 0.
  config = configs.get_config("tiny").replace(
    train_data=pattern,
    eval_data=pattern,
    train_examples=6,
    eval_examples=3,
    schema="imagenet",
  )
  train_spec, eval_spec = data.resolve_input_specs(config, 32)
  assert (train_spec.num_examples, eval_spec.num_examples) == (6, 3)


# What a TPU's infeed may be handed: no uint8 (rejected historically), int64
# or strings. Model Garden feeds bfloat16/float32 images and int32 labels.
NOT_FOR_TPU = (tf.uint8, tf.int64, tf.string)


def test_bfloat16_holds_every_uint8_value_exactly():
  pixels = tf.range(256, dtype=tf.int32)
  as_bfloat16 = tf.cast(tf.cast(pixels, tf.uint8), tf.bfloat16)
  assert tf.reduce_all(tf.cast(as_bfloat16, tf.int32) == pixels)
  # The control: bfloat16's 8 significant bits stop being exact above 256.
  assert int(tf.cast(tf.cast(257, tf.bfloat16), tf.int32)) != 257


@pytest.mark.parametrize("builder", ["train", "eval"])
def test_tpu_input_functions_feed_only_dtypes_tpus_take(tmp_path, builder):
  pattern = write_set(tmp_path / "d", 2, 8)
  host_spec = spec_for(pattern)
  tpu_spec = dataclasses.replace(host_spec, device_dtypes=True)

  def build(spec):
    if builder == "train":
      return data.make_train_dataset(spec, context(1, 0), 4)
    return data.make_eval_dataset(spec, context(1, 0), 4, steps=4)

  host, tpu = build(host_spec), build(tpu_spec)
  third = tf.int64 if builder == "train" else tf.float32  # skipped / weights
  assert [s.dtype for s in host.element_spec] == [tf.uint8, tf.int64, third]
  assert [s.dtype for s in tpu.element_spec] == [
    tf.bfloat16,
    tf.int32,
    tf.int32 if builder == "train" else tf.float32,
  ]
  assert not [s for s in tpu.element_spec if s.dtype in NOT_FOR_TPU]
  assert [s.shape for s in tpu.element_spec] == [
    s.shape for s in host.element_spec
  ]

  # The same examples, only the dtypes differ (bfloat16 pixels are exact).
  def examples(dataset):
    found = []
    for images, labels, counts in dataset.take(4):
      for image, label, count in zip(
        images.numpy(), labels.numpy(), counts.numpy()
      ):
        found.append(
          (image.astype(np.float64).tobytes(), int(label), float(count))
        )
    return sorted(found)

  assert examples(tpu) == examples(host)
  # The control: one grey level more in every image is a difference.
  brighter = tpu.map(
    lambda images, labels, counts: (images + 1, labels, counts)
  )
  assert examples(brighter) != examples(host)


def test_only_tpu_strategies_cast_on_the_host(tmp_path):
  spec = spec_for(write_set(tmp_path / "d", 1, 2))
  strategies = ("one_device", "mirrored", "multi_worker", "tpu")
  assert [
    data.for_strategy(spec, name).device_dtypes for name in strategies
  ] == [False, False, False, True]


# A TPU pod slice as tf.distribute sees it: 4 hosts (input pipelines) feeding
# 32 replicas, e.g. a v4-32 or v5e-32.
POD_HOSTS, POD_REPLICAS = 4, 32


def records_per_host(spec, host_ids, elements=48):
  """The record ids each host's training pipeline reads (a set per host)."""
  seen = []
  for host_id in host_ids:
    host = tf.distribute.InputContext(
      num_input_pipelines=POD_HOSTS,
      input_pipeline_id=host_id,
      num_replicas_in_sync=POD_REPLICAS,
    )
    # One record per replica batch; more elements than any host's share.
    dataset = data.make_train_dataset(spec, host, POD_REPLICAS)
    seen.append(set(pixel_ids(dataset, elements)))
  return seen


def check_split(seen, num_files, per_file):
  """Disjoint, complete, and balanced to one file (or one record a file)."""
  for i, a in enumerate(seen):
    for b in seen[i + 1 :]:
      assert not a & b, f"hosts share records {sorted(a & b)}"
  assert set().union(*seen) == set(range(num_files * per_file))
  if num_files >= len(seen):  # Whole files per host.
    files = [{record // per_file for record in records} for records in seen]
    assert all(
      len(records) == len(f) * per_file for records, f in zip(seen, files)
    )
    assert max(map(len, files)) - min(map(len, files)) <= 1, files
  else:  # Every host reads a part of every file.
    sizes = [len(records) for records in seen]
    assert max(sizes) - min(sizes) <= num_files, sizes


@pytest.mark.parametrize("num_files,per_file", [(10, 3), (13, 2), (3, 8)])
def test_tpu_pod_hosts_read_disjoint_complete_balanced_shares(
  tmp_path, num_files, per_file
):
  """3 files for 4 hosts: sharded by record instead of by file."""
  spec = spec_for(write_set(tmp_path / "d", num_files, per_file))
  seen = records_per_host(spec, range(POD_HOSTS))
  check_split(seen, num_files, per_file)
  if num_files >= POD_HOSTS:
    assert sorted(len(s) // per_file for s in seen) == sorted(
      len(range(i, num_files, POD_HOSTS)) for i in range(POD_HOSTS)
    )
  # The control: hosts that all think they are host 0 read the same data.
  with pytest.raises(AssertionError, match="hosts share records"):
    check_split(records_per_host(spec, [0] * POD_HOSTS), num_files, per_file)


def test_split_check_catches_an_unbalanced_split():
  # 10 files of 3 records in contiguous blocks of 3 files: 3, 3, 3 and 1.
  blocks = [
    set(range(first * 3, min(first + 3, 10) * 3)) for first in (0, 3, 6, 9)
  ]
  with pytest.raises(AssertionError):
    check_split(blocks, 10, 3)


def uneven_set(directory):
  """Seven files of 3..9 records: segments and pipelines hold unequal shares."""
  index = 0
  os.makedirs(directory, exist_ok=True)
  for f, size in enumerate([3, 9, 4, 8, 5, 7, 6]):
    serialized = [
      records.image_example(_jpeg(index + i), (index + i) % 2, 40, 48)
      for i in range(size)
    ]
    records.write_shard(
      os.path.join(directory, records.shard_name("train", f, 7)),
      [e.SerializeToString() for e in serialized],
    )
    index += size
  return os.path.join(directory, "train-*")


def _boundaries(plan):
  """Where each segment starts in the stream."""
  starts = [0]
  for count in plan.segment_records:
    starts.append(starts[-1] + count)
  return starts


# 1 and 2 pipelines read by file; 8 pipelines (7 files) by record.
@pytest.mark.parametrize("pipelines", [1, 2, 8])
@pytest.mark.parametrize("counted", [True, False])
def test_a_resume_at_any_position_continues_the_same_stream(
  tmp_path, pipelines, counted
):
  """At, before and after every segment boundary and into the second pass
  over a pipeline's share; with the files' record counts (reading at most
  the segment) and without (--train_examples, no manifest: reading up to
  the place)."""
  spec = spec_for(uneven_set(tmp_path / "d"), shards_per_segment=2)
  for pipeline_id in sorted({0, pipelines - 1}):
    plan = data.plan_epoch(spec, pipelines, pipeline_id, 5)
    total = sum(plan.segment_records)
    full = pixel_ids(
      data.make_train_dataset(
        spec, context(pipelines, pipeline_id), pipelines, 5
      ),
      total + 8,
    )
    assert sorted(full[:total]) == sorted(set(full[:total]))  # once per pass
    positions = {1, total, total + 2}
    for start in _boundaries(plan)[1:-1]:
      positions |= {start - 1, start}  # the last of a segment, the first
    positions = {p for p in positions if p > 0}  # (empty segments: -1)
    resumed_spec = (
      spec if counted else dataclasses.replace(spec, file_counts=())
    )
    for position in sorted(positions):
      resumed = pixel_ids(
        data.make_train_dataset(
          resumed_spec, context(pipelines, pipeline_id), pipelines, 5, position
        ),
        4,
      )
      assert resumed == full[position : position + 4], (pipeline_id, position)
      # The control: one record off is another stream.
      assert resumed != full[position + 1 : position + 5]


def test_a_segment_is_shuffled_only_within_itself(tmp_path):
  spec = spec_for(
    uneven_set(tmp_path / "d"), shards_per_segment=2, shuffle_buffer=1000
  )
  plan = data.plan_epoch(spec, 1, 0, 0)
  stream = pixel_ids(data.make_train_dataset(spec, context(1, 0), 1), 49)
  bounds = [0]
  for count in plan.segment_records:
    bounds.append(bounds[-1] + count)
  first_ids = {int(round(i)) for i in stream[: bounds[1]]}
  by_file = dict(zip(spec.files, _ids_by_file(spec.files)))
  assert first_ids == set().union(*(by_file[f] for f in plan.segments[0]))
  # One segment for the epoch: the buffer mixes across every file.
  whole = data.plan_epoch(
    dataclasses.replace(spec, shards_per_segment=0), 1, 0, 0
  )
  assert len(whole.segments) == 1 and len(plan.segments) == 4


def _ids_by_file(files):
  ids, start = [], 0
  for f in files:
    count = sum(1 for _ in tf.data.TFRecordDataset(f))
    ids.append(set(range(start, start + count)))
    start += count
  return ids


def test_an_empty_pipeline_is_one_line_naming_the_flag(tmp_path):
  spec = spec_for(uneven_set(tmp_path / "d"))
  spec = dataclasses.replace(spec, file_counts=(0,) * len(spec.files))
  with pytest.raises(UserError, match="--train_data are empty"):
    data.plan_epoch(spec, 1, 0, 0)


def _bytes_read():
  """This process's bytes read by system calls so far (Linux)."""
  with open("/proc/self/io") as f:
    return int(next(line for line in f if line.startswith("rchar:")).split()[1])


@pytest.mark.skipif(
  not os.path.exists("/proc/self/io"), reason="reads /proc/self/io (Linux)"
)
def test_a_resume_reads_at_most_one_segment_to_reach_its_place(tmp_path):
  """Bytes read until the first resumed batch stay flat as the place moves
  through the epoch: under three segments' worth (32 in the epoch). The
  control, the whole epoch one segment (as before segments), reads
  everything before its place."""
  directory = tmp_path / "big"
  os.makedirs(directory)
  padding = os.urandom(64 << 10)  # 64 KiB per record: reads dominate noise.
  for f in range(64):
    serialized = []
    for i in range(4):
      example = records.image_example(_jpeg(f * 4 + i), 0, 40, 48)
      example.features.feature["padding"].bytes_list.value.append(padding)
      serialized.append(example.SerializeToString())
    records.write_shard(
      os.path.join(directory, records.shard_name("train", f, 64)), serialized
    )
  spec = spec_for(str(directory / "train-*"), shuffle_buffer=8)
  segment_bytes = 2 * 4 * len(serialized[0])

  def read_to_reach(shards_per_segment, position):
    segmented = dataclasses.replace(spec, shards_per_segment=shards_per_segment)
    before = _bytes_read()
    iterator = iter(
      data.make_train_dataset(segmented, context(1, 0), 1, 0, position)
    )
    next(iterator)
    read = _bytes_read() - before
    del iterator  # Its prefetching stops before the next measure.
    gc.collect()
    return read

  read_to_reach(2, 0)  # Warm-up: the first dataset loads what TF loads once.
  # The segment holding the place, and what prefetching may start after it.
  for position in (4, 80, 160, 240):
    assert read_to_reach(2, position) < 3 * segment_bytes, position
  # One segment: everything up to the place (240 of 256 records) is read.
  epoch_bytes = 32 * segment_bytes
  assert read_to_reach(0, 240) > 0.9 * epoch_bytes


def test_listing_shards_makes_no_call_per_file(tmp_path, monkeypatch):
  """Start-up lists a 1024-shard set (and its manifest) without one
  metadata call per file: on gs:// each would be a round trip. Control:
  the calls counted here do count (a per-file isdir would show)."""
  directory = tmp_path / "many"
  os.makedirs(directory)
  entries = []
  for index in range(1024):
    name = records.shard_name("train", index, 1024)
    records.write_shard(os.path.join(directory, name), [])
    entries.append({"file": name, "num_examples": 0})
  records.write_manifest(
    str(directory), {"splits": {"train": {"shards": entries}}}
  )
  calls = []
  for name in ("isdir", "exists", "stat", "glob", "listdir"):
    real = getattr(tf.io.gfile, name)

    def counted(*args, _real=real, _name=name, **kwargs):
      calls.append(_name)
      return _real(*args, **kwargs)

    monkeypatch.setattr(tf.io.gfile, name, counted)
  for pattern in (str(directory / "train-*"), str(directory)):
    calls.clear()
    files = shards.list_files(pattern, "train_data")
    assert len(files) == 1024
    assert shards.known_counts(files, None) == (0,) * 1024
    assert len(calls) < 10, calls
  calls.clear()
  for f in files[:5]:
    tf.io.gfile.isdir(f)
  assert calls == ["isdir"] * 5


@pytest.mark.parametrize("seed", [0, 123_456_789])
def test_any_seed_builds_the_training_stream(tmp_path, seed):
  """--seed=0 (with the global seed 0, as the trainer sets it) and a seed
  whose per-epoch arithmetic passes int64's range both train."""
  spec = spec_for(uneven_set(tmp_path / "d"), shards_per_segment=2, seed=seed)
  tf.random.set_seed(seed)
  try:
    images, _, _ = next(iter(data.make_train_dataset(spec, context(1, 0), 4)))
  finally:
    tf.random.set_seed(None)
  assert images.shape[0] == 4


def test_a_damaged_files_count_stays_in_the_model_dir(tmp_path):
  """--skip_corrupt counts what it can read of a damaged file: the run uses
  it, but it is no fact to write beside the files for other runs."""
  pattern = write_set(tmp_path / "set", 2, 5)
  files = shards.list_files(pattern, "train_data")
  with open(files[1], "rb") as f:
    content = f.read()
  with open(files[1], "wb") as f:
    f.write(content[: len(content) // 2])
  counts = str(tmp_path / "run" / "example_counts.json")
  with pytest.raises(UserError, match=f"--train_data: {files[1]} is damaged"):
    shards.count_records(files, counts, remember=True)
  readable = shards.count_records(
    files, counts, remember=True, skip_corrupt=True
  )
  assert readable[0] == 5 and readable[1] < 5
  assert not (tmp_path / "set" / shards.COUNTS_SIDECAR).exists()
  assert shards.known_counts(files, counts) == readable


def test_the_manifest_wins_over_counts_beside_and_in_the_model_dir(tmp_path):
  pattern = write_set(tmp_path / "set", 2, 5)
  files = shards.list_files(pattern, "train_data")
  counts = str(tmp_path / "run" / "example_counts.json")
  shards.write_counts_beside(files, (1, 1))
  assert shards.known_counts(files, counts) == (1, 1)
  records.write_manifest(
    str(tmp_path / "set"),
    {
      "splits": {
        "train": {
          "shards": [
            {"file": os.path.basename(f), "num_examples": 5} for f in files
          ]
        }
      }
    },
  )
  assert shards.known_counts(files, counts) == (5, 5)


def test_damage_no_second_read_finds_points_to_verify(tmp_path):
  """Damage every file still reads whole from here (seen by a tf.data
  service worker, or in transit) is one line saying what finds the file.
  Control: a damaged file is named."""
  pattern = write_set(tmp_path, 2, 3)
  files = shards.list_files(pattern, "train_data")
  error = tf.errors.DataLossError(None, None, "corrupted record at 12")
  message = shards.damaged_data_message(error, [("train_data", files)])
  assert message.startswith("damaged TFRecord data in --train_data (")
  assert "python -m trainer.prepare --verify PATTERN" in message
  with open(files[1], "r+b") as f:
    f.truncate(20)
  named = shards.damaged_data_message(error, [("train_data", files)])
  assert named.startswith(f"--train_data: {files[1]} is damaged (")


@pytest.mark.parametrize(
  "error", [tf.errors.UnavailableError, tf.errors.DeadlineExceededError]
)
def test_storage_that_stops_answering_is_a_restart_not_damage(error):
  """Past TensorFlow's own retries, an unanswered read or collective ends
  the run with one line and the exit code that means "run again"."""
  from trainer.errors import Unanswered
  from trainer.loop import controller

  class Failing:
    def _run(self):
      raise error(None, None, "Error executing an HTTP request: 503")

  with pytest.raises(Unanswered) as raised:
    controller.Controller.run(Failing())
  assert "storage or another worker stopped answering" in str(raised.value)
  assert "resumes from the last checkpoint" in str(raised.value)


def test_what_counts_as_storage_that_stopped_answering():
  """The GCS client's give-up after its retries is an Aborted error; other
  Aborted errors (a cancelled collective) and data errors are not it."""
  from trainer import errors

  gave_up = tf.errors.AbortedError(
    None, None, "All 10 retry attempts failed. The last failure: 503"
  )
  assert errors.unanswered(gave_up)
  assert errors.unanswered(tf.errors.UnavailableError(None, None, "x"))
  assert not errors.unanswered(tf.errors.AbortedError(None, None, "cancelled"))
  assert not errors.unanswered(tf.errors.DataLossError(None, None, "x"))
