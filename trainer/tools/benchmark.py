"""Measure this machine: python -m trainer.benchmark [--config=cats_vs_dogs] [FLAGS]

    python -m trainer.benchmark                       # the full table, ~5 min on 2 cores
    python -m trainer.benchmark --steps=2 --warmup_steps=1 --skip=seed,scaling   # seconds
    python -m trainer.benchmark --train_data='gs://b/data/train-*' --json=bench.json

Measures, each phase in a fresh process so none inherits another's threads,
caches or memory, and all side by side in one run:

  peak      matrix-multiply peak through TensorFlow, float32 and bfloat16
  step      training steps on in-memory batches: images/s, and the fraction
            of the peak given the model's analytic FLOPs
  input     the input pipeline alone (decode + augmentation): images/s and
            images/s per core
  e2e       end-to-end training from TFRecords: images/s, fraction of peak,
            peak host memory
  seed      the seed notebook's setup on the same records: Keras fit,
            batch 4, float32, map -> shuffle(1000) -> batch(4) with a float
            resize, no parallel map, no prefetch; and our e2e / seed ratio
  scaling   2 workers on 127.0.0.1 (one core each) vs one process with both
            cores (measured before and after them, averaged), same global
            batch: multi-worker efficiency
  service   e2e through a tf.data service (a dispatcher and one worker on
            127.0.0.1 here; on this one machine it measures the service's
            overhead, elsewhere its workers add CPUs)

Without --train_data it writes realistic JPEG records once (about 450x375,
~45 KB, like Cats vs Dogs). Every trainer flag works here (model, precision,
batch, strategy, ...; defaults from --config, cats_vs_dogs unless given):
each phase trains the resulting Config. A benchmark, not a test: nothing
here asserts a speed.
"""

import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import configs
from trainer import config as config_lib
from trainer import errors
from trainer.errors import UserError

PHASES = ("peak", "step", "input", "e2e", "seed", "scaling", "service")

try:
  DEFAULTS = configs.from_argv(sys.argv, "cats_vs_dogs")
except UserError as e:
  print(f"Usage error: --config: {e}", file=sys.stderr)
  sys.exit(errors.USAGE_EXIT_CODE)
FLAGS = flags.FLAGS
# Every trainer flag, defaulting to --config's values.
config_lib.define_flags(FLAGS, DEFAULTS)
flags.DEFINE_integer("steps", 12, "Timed training steps per phase.")
flags.DEFINE_integer("warmup_steps", 4, "Untimed steps first (compilation).")
flags.DEFINE_integer("input_batches", 40, "Batches timed in the input phase.")
flags.DEFINE_integer(
  "records", 1024, "Generated records (without --train_data)."
)
flags.DEFINE_list("skip", [], f"Phases to skip, of {','.join(PHASES)}.")
flags.DEFINE_string("json", "", "Also write the results here as JSON.")
flags.DEFINE_string("phase", "", "Internal: run one phase and print its JSON.")


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a phase needs besides the trainer's Config."""

  steps: int
  warmup_steps: int
  input_batches: int
  peaks: dict = dataclasses.field(default_factory=dict)


def _peak_rss_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------
# Data.


def realistic_records(directory, count, seed=0):
  """~450x375 JPEGs of ~45 KB (smooth shapes, texture, noise), written once."""
  import io

  import numpy as np
  from PIL import Image

  from trainer import records

  if records.read_manifest(directory):
    return os.path.join(directory, "train-*")
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  num_shards = 8
  per_shard = -(-count // num_shards)
  shards, index = [], 0
  for shard in range(num_shards):
    serialized = []
    for _ in range(min(per_shard, count - index)):
      height, width = int(rng.integers(330, 420)), int(rng.integers(400, 500))
      yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
      image = np.zeros((height, width, 3), np.float32)
      for _ in range(6):  # soft blobs of colour
        cy, cx, r = (
          rng.uniform(0, height),
          rng.uniform(0, width),
          rng.uniform(30, 160),
        )
        weight = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        image += weight[..., None] * rng.uniform(-120, 120, 3)
      image += 128 + 25 * np.sin(xx / rng.uniform(2, 9))[..., None]
      image += rng.normal(0, 9, image.shape)
      buffer = io.BytesIO()
      Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
        buffer, format="JPEG", quality=80
      )
      label = index % 2
      serialized.append(
        records.image_example(
          buffer.getvalue(), label, height, width
        ).SerializeToString()
      )
      index += 1
    name = records.shard_name("train", shard, num_shards)
    records.write_shard(os.path.join(directory, name), serialized)
    shards.append({"file": name, "num_examples": len(serialized)})
  records.write_manifest(
    directory,
    {
      "source": "benchmark",
      "class_names": ["a", "b"],
      "splits": {"train": {"num_examples": count, "shards": shards}},
    },
  )
  return os.path.join(directory, "train-*")


# ----------------------------------------------------------------------------
# Phases (each runs in its own process and returns a dict).


def phase_peak(config, settings):
  del config, settings
  import tensorflow as tf

  results = {}
  for dtype in ("float32", "bfloat16"):
    size = 2048
    a = tf.random.normal([size, size], dtype=tf.float32)
    a = tf.cast(a, dtype)
    b = tf.cast(tf.random.normal([size, size]), dtype)

    @tf.function
    def chain(a=a, b=b):
      x = a
      for _ in range(4):
        # Traced and called below, in this iteration of the dtype loop.
        x = tf.matmul(x, b) * tf.cast(1e-3, dtype)  # noqa: B023
      return tf.reduce_sum(tf.cast(x, tf.float32))

    chain()
    best = float("inf")
    for _ in range(5):
      start = time.perf_counter()
      chain().numpy()
      best = min(best, time.perf_counter() - start)
    results[f"{dtype}_gflops"] = 4 * 2 * size**3 / best / 1e9
  return results


def _trainer(config):
  from trainer import train as train_lib

  return train_lib.Trainer(config, "benchmark")


def _time_train_calls(trainer, iterator, warmup_steps, steps):
  import tensorflow as tf

  from trainer import train as train_lib

  control = train_lib.requests_vector()
  per_call = min(trainer.clock.steps_per_call, max(1, steps))
  trainer.train_steps(iterator, tf.constant(max(1, warmup_steps)), control)[
    0
  ].numpy()
  calls = max(1, steps // per_call)
  start = time.perf_counter()
  for _ in range(calls):
    trainer.train_steps(iterator, tf.constant(per_call), control)[0].numpy()
  elapsed = time.perf_counter() - start
  return calls * per_call * trainer.config.global_batch_size / elapsed


def _flops_summary(trainer, images_per_sec, peaks):
  from trainer import model as model_lib

  flops = model_lib.training_flops_per_image(trainer.model)
  peak_key = (
    "bfloat16_gflops" if "bfloat16" in trainer.precision else "float32_gflops"
  )
  achieved = images_per_sec * flops / 1e9
  result = {
    "images_per_sec": images_per_sec,
    "gflops": achieved,
    "train_gflop_per_image": flops / 1e9,
  }
  if peaks.get(peak_key):
    result["fraction_of_peak"] = achieved / peaks[peak_key]
    result["peak_used"] = peak_key
  return result


def phase_step(config, settings):
  import tensorflow as tf

  trainer = _trainer(config)
  size = trainer.image_size
  per_replica = trainer.runtime.per_replica_batch_size
  images = tf.cast(
    tf.random.uniform([per_replica, size, size, 3], 0, 255), tf.uint8
  )
  labels = tf.cast(tf.random.uniform([per_replica], 0, 2, tf.int32), tf.int64)
  skipped = tf.zeros([per_replica], tf.int64)
  dataset = trainer.strategy.distribute_datasets_from_function(
    lambda ctx: tf.data.Dataset.from_tensors((images, labels, skipped)).repeat()
  )
  rate = _time_train_calls(
    trainer, iter(dataset), settings.warmup_steps, settings.steps
  )
  result = _flops_summary(trainer, rate, settings.peaks)
  result.update(
    precision=trainer.precision,
    strategy=trainer.info.name,
    replicas=trainer.info.num_replicas,
    all_reduce=trainer.runtime.all_reduce_dtype,
    global_batch_size=trainer.config.global_batch_size,
    model=trainer.config.model,
  )
  return result


def phase_input(config, settings):
  import tensorflow as tf

  from trainer import data

  spec = data.make_input_spec(
    config.train_data, "train_data", config, config_lib.image_size(config)
  )
  batch = config.global_batch_size
  dataset = data.make_train_dataset(
    spec, tf.distribute.InputContext(1, 0, 1), batch
  )
  iterator = iter(dataset)
  for _ in range(3):
    next(iterator)
  start = time.perf_counter()
  for _ in range(settings.input_batches):
    next(iterator)[0].numpy()
  rate = settings.input_batches * batch / (time.perf_counter() - start)
  cores = len(os.sched_getaffinity(0))
  return {
    "images_per_sec": rate,
    "images_per_sec_per_core": rate / cores,
    "cores": cores,
    "augment": config.augment,
  }


def phase_e2e(config, settings):
  trainer = _trainer(config)
  iterator = trainer.train_iterator(0, 0)
  rate = _time_train_calls(
    trainer, iterator, settings.warmup_steps, settings.steps
  )
  result = _flops_summary(trainer, rate, settings.peaks)
  result.update(
    peak_host_memory_mb=_peak_rss_mb(),
    precision=trainer.precision,
    global_batch_size=trainer.config.global_batch_size,
  )
  return result


def phase_seed(config, settings):
  """The seed notebook's own setup, on the same records."""
  import keras
  import tensorflow as tf

  from trainer import data
  from trainer import model as model_lib
  from trainer import shards

  files = shards.list_files(config.train_data, "train_data")
  schema = data.detect_schema(files[0])
  image_key, label_key = data.SCHEMA_KEYS[schema]

  def parse(record):
    features = tf.io.parse_single_example(
      record,
      {
        image_key: tf.io.FixedLenFeature([], tf.string),
        label_key: tf.io.FixedLenFeature([], tf.int64),
      },
    )
    image = tf.io.decode_jpeg(features[image_key], channels=3)
    return image, features[label_key]

  def preprocess(image, label):  # exactly the seed's
    image = tf.cast(image, tf.float32) / 255.0
    image = tf.image.resize(image, [224, 224])
    return image, label

  dataset = tf.data.TFRecordDataset(list(files)).map(parse).repeat()
  dataset = dataset.map(preprocess).shuffle(1000).batch(4)
  keras.mixed_precision.set_global_policy("float32")
  # The seed's network with stock Keras layers (its BatchNormalization, not
  # our fused one); it feeds [0, 1] floats, so our in-model rescaling goes.
  model = model_lib.build_model("seed", 1, portable=True)
  seed_model = keras.Model(model.get_layer("conv1").input, model.output)
  seed_model.compile(
    loss=keras.losses.BinaryCrossentropy(),
    optimizer=keras.optimizers.Adam(1e-3),
    metrics=["accuracy"],
  )

  class BatchClock(keras.callbacks.Callback):
    """Steady state: time batches after the shuffle buffer filled and the
    first steps compiled (the seed refills it only once per epoch)."""

    def __init__(self):
      super().__init__()
      self.times = []

    def on_train_batch_end(self, batch, logs=None):
      self.times.append(time.perf_counter())

  warmup, steps = max(4, settings.warmup_steps * 4), max(8, settings.steps * 4)
  clock = BatchClock()
  seed_model.fit(
    dataset,
    steps_per_epoch=warmup + steps,
    epochs=1,
    verbose=0,
    callbacks=[clock],
  )
  rate = steps * 4 / (clock.times[-1] - clock.times[warmup - 1])
  return {"images_per_sec": rate, "peak_host_memory_mb": _peak_rss_mb()}


def phase_scaling(config, settings):
  """2 workers x 1 core vs 1 process x 2 cores, same global batch."""
  repo = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )
  from launch import cluster

  one_process = config.replace(strategy="one_device")
  before = _run_phase("step", one_process, settings, repo)["images_per_sec"]
  envs, _ = cluster.worker_envs(2, "cpu", 1)
  processes = [
    _spawn_phase(
      "step", config.replace(strategy="multi_worker"), settings, repo, env
    )
    for env in envs
  ]
  results = [_collect(p) for p in processes]
  multi = results[0]["images_per_sec"]
  # On a shared machine the speed drifts: bracket the workers' run.
  after = _run_phase("step", one_process, settings, repo)["images_per_sec"]
  single = (before + after) / 2
  return {
    "one_process_images_per_sec": single,
    "one_process_before_after": [before, after],
    "two_workers_images_per_sec": multi,
    "all_reduce": results[0]["all_reduce"],
    "efficiency": multi / single,
  }


def phase_service(config, settings):
  """End-to-end with decoding moved to a tf.data service worker."""
  repo = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )
  from launch import cluster

  dispatcher_port, worker_port = cluster.free_ports(2)
  servers = []
  for args in (
    ["--role=dispatcher", f"--port={dispatcher_port}"],
    [
      "--role=worker",
      f"--port={worker_port}",
      f"--dispatcher=127.0.0.1:{dispatcher_port}",
    ],
  ):
    server = subprocess.Popen(
      [sys.executable, "-m", "trainer.data_service", *args],
      cwd=repo,
      stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL,
      text=True,
    )
    servers.append(server)
    # Start the trainer only once the servers listen.
    if "listening" not in server.stdout.readline():
      raise RuntimeError(f"tf.data service {args[0]} did not start")
  try:
    result = _run_phase(
      "e2e",
      config.replace(data_service=f"grpc://127.0.0.1:{dispatcher_port}"),
      settings,
      repo,
    )
  finally:
    for server in servers:
      server.terminate()
      server.wait()
  return result


# ----------------------------------------------------------------------------
# Orchestration.


def _spawn_phase(name, config, settings, repo, env=None):
  phase_input = json.dumps(
    {
      "config": json.loads(config.to_json()),
      "settings": dataclasses.asdict(settings),
    }
  )
  return subprocess.Popen(
    [
      sys.executable,
      "-m",
      "trainer.benchmark",
      f"--phase={name}",
      "--phase_input=" + phase_input,
    ],
    cwd=repo,
    env=env or dict(os.environ),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _collect(process):
  out, err = process.communicate()
  if process.returncode != 0:
    raise RuntimeError(f"benchmark phase failed:\n{err[-3000:]}")
  return json.loads(out.strip().splitlines()[-1])


def _run_phase(name, config, settings, repo):
  return _collect(_spawn_phase(name, config, settings, repo))


flags.DEFINE_string(
  "phase_input", "", "Internal: the Config and Settings of --phase, as JSON."
)

PHASE_FUNCTIONS = {
  "peak": phase_peak,
  "step": phase_step,
  "input": phase_input,
  "e2e": phase_e2e,
  "seed": phase_seed,
  "scaling": phase_scaling,
  "service": phase_service,
}


def _of_peak(result):
  """The fraction of peak as a percentage; "-" when the peak was not measured."""
  fraction = result.get("fraction_of_peak")
  return "-" if fraction is None else f"{fraction:.0%}"


def format_table(results):
  rows = [("phase", "images/s", "GFLOP/s", "of peak", "notes")]
  peak = results.get("peak", {})
  if peak:
    rows.append(
      (
        "matmul peak",
        "",
        f"{peak['float32_gflops']:.0f} f32 / "
        f"{peak['bfloat16_gflops']:.0f} bf16",
        "",
        "2048x2048 matmuls",
      )
    )
  for name in ("step", "e2e"):
    if name in results:
      r = results[name]
      notes = (
        f"{r.get('precision', '')}, batch {r.get('global_batch_size', '')}, "
        f"{r['train_gflop_per_image']:.2f} GFLOP/image"
      )
      if "peak_host_memory_mb" in r:
        notes += f", peak RSS {r['peak_host_memory_mb']:.0f} MB"
      rows.append(
        (
          name,
          f"{r['images_per_sec']:.1f}",
          f"{r['gflops']:.0f}",
          _of_peak(r),
          notes,
        )
      )
  if "input" in results:
    r = results["input"]
    rows.append(
      (
        "input",
        f"{r['images_per_sec']:.0f}",
        "",
        "",
        f"{r['images_per_sec_per_core']:.0f}/core on {r['cores']} cores, "
        f"{r['augment']}",
      )
    )
  if "seed" in results:
    r = results["seed"]
    ratio = results.get("speedup_vs_seed")
    rows.append(
      (
        "seed setup",
        f"{r['images_per_sec']:.1f}",
        "",
        "",
        f"fit, batch 4, float32; ours is {ratio:.1f}x" if ratio else "",
      )
    )
  if "service" in results:
    r = results["service"]
    rows.append(
      (
        "e2e via tf.data service",
        f"{r['images_per_sec']:.1f}",
        f"{r['gflops']:.0f}",
        _of_peak(r),
        "dispatcher + 1 worker on 127.0.0.1",
      )
    )
  if "scaling" in results:
    r = results["scaling"]
    rows.append(
      (
        "2 workers",
        f"{r['two_workers_images_per_sec']:.1f}",
        "",
        "",
        f"vs {r['one_process_images_per_sec']:.1f} in one process: "
        f"efficiency {r['efficiency']:.2f}, all-reduce in "
        f"{r['all_reduce']}",
      )
    )
  widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
  return "\n".join(
    "  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows
  )


def main(argv):
  del argv
  repo = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )
  if FLAGS.phase:
    given = json.loads(FLAGS.phase_input)
    config = config_lib.Config(**given["config"])
    result = PHASE_FUNCTIONS[FLAGS.phase](config, Settings(**given["settings"]))
    print(json.dumps(result))
    return 0
  unknown = set(FLAGS.skip) - set(PHASES)
  if unknown:
    raise app.UsageError(
      f"--skip: unknown phase(s) {sorted(unknown)}; valid: {','.join(PHASES)}",
      exitcode=2,
    )
  import tempfile

  from trainer import synthetic

  try:
    config = config_lib.from_flags(FLAGS)
  except UserError as e:
    print(f"Error: {e}", file=sys.stderr)
    return 1
  train_data = config.train_data
  if not train_data:
    cache = os.path.join(
      os.path.dirname(synthetic.default_dir()),
      f"benchmark-jpeg-{FLAGS.records}",
    )
    train_data = realistic_records(cache, FLAGS.records)
  scratch = tempfile.mkdtemp(prefix="alexnet-bench-")
  # One endless epoch of training data, nothing else: the phases time steps.
  config = config.replace(
    train_data=train_data,
    eval_data="",
    epochs=1,
    steps_per_epoch=10**6,
    export=False,
    early_stopping_patience=0,
  )
  settings = Settings(FLAGS.steps, FLAGS.warmup_steps, FLAGS.input_batches)
  results = {"train_data": train_data, "cpu_count": os.cpu_count()}
  for name in PHASES:
    if name in FLAGS.skip:
      continue
    print(f"[benchmark] {name} ...", file=sys.stderr, flush=True)
    phase_config = config.replace(model_dir=os.path.join(scratch, name))
    results[name] = _run_phase(name, phase_config, settings, repo)
    if name == "peak":
      settings = dataclasses.replace(settings, peaks=results["peak"])
  if "e2e" in results and "seed" in results:
    results["speedup_vs_seed"] = (
      results["e2e"]["images_per_sec"] / results["seed"]["images_per_sec"]
    )
  print(format_table(results))
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(results, f, indent=2)
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=errors.parse_flags)
