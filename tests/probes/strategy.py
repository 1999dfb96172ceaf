"""Probes of trainer.strategy: what a process gets, with its own device
set-up, and how one CPU device is fed."""

import json
import sys

import numpy as np
from prelude import emit

import configs
from trainer import data
from trainer import model as model_lib
from trainer import strategy as strategy_lib
from trainer.platform import devices as devices_lib


def describe(info):
  """What a probe reports of the strategy it got (and `auto` precision)."""
  precision, why = strategy_lib.choose_precision("auto", info.name)
  return {
    "name": info.name,
    "reason": info.reason,
    "replicas": info.num_replicas,
    "type": type(info.strategy).__name__,
    "precision": precision,
    "why": why,
    "chief": info.is_chief,
  }


def describe_strategy(strategy, cpu_devices, devices):
  """Prints describe() of --strategy=STRATEGY --devices=DEVICES on
  CPU_DEVICES logical CPU devices (0: none set up), as JSON."""
  devices_lib.configure_devices(int(cpu_devices))
  print(json.dumps(describe(strategy_lib.get_strategy(strategy, devices, ""))))


def plain_machine():
  """What a process that splits nothing sees, as one JSON line: describe()
  of "auto" and "mirrored", and each precision's dtypes in the tiny model.
  None of these needs a device set-up of its own, so one interpreter answers
  them all (a fresh one per question would only repeat TensorFlow's
  start-up)."""
  devices_lib.configure_devices(0)
  answers = {
    strategy: describe(strategy_lib.get_strategy(strategy, "", ""))
    for strategy in ("auto", "mirrored")
  }
  # float32 last: it must undo the mixed policies before it.
  for precision in ("mixed_bfloat16", "mixed_float16", "float32"):
    chosen, why = strategy_lib.choose_precision(precision, "one_device")
    strategy_lib.set_precision(chosen)
    model = model_lib.build_model("tiny", 1, 32)
    answers[precision] = {
      "why": why,
      "conv": model.get_layer("conv1").compute_dtype,
      "variables": model.get_layer("conv1").kernel.dtype,
      "output": model.get_layer("predictions").compute_dtype,
    }
  print(json.dumps(answers))


def auto_on_workers():
  """What --strategy=auto picks on a worker of a cluster (TF_CONFIG)."""
  info = strategy_lib.get_strategy("auto")
  emit(
    name=info.name,
    reason=info.reason,
    chief=info.is_chief,
    type=type(info.strategy).__name__,
    replicas=info.num_replicas,
  )


def one_device_batches(synthetic_dir):
  """Six batches of the tiny config's data (drawn into `synthetic_dir`) on
  one CPU device, through strategy_lib.distribute_datasets and through
  TensorFlow's own distribute_datasets_from_function.

  Prints whether they are the same, and whether another epoch's are (the
  control); "MARK" on stderr between our iterators and TensorFlow's, so the
  test can tell whose warnings are whose.
  """
  config = configs.get_config("tiny").replace(
    synthetic_dir=synthetic_dir, deterministic=True
  )
  train_spec, _ = data.resolve_input_specs(config, 32)
  info = strategy_lib.get_strategy("one_device")

  def batches(dataset, count=6):
    iterator = iter(dataset)
    return [
      np.concatenate([np.asarray(x).ravel() for x in next(iterator)])
      for _ in range(count)
    ]

  def make(epoch):
    return lambda ctx: data.make_train_dataset(train_spec, ctx, 32, epoch)

  # Ours first: TensorFlow prints its warning at most every 30 seconds.
  direct = batches(strategy_lib.distribute_datasets(info.strategy, make(0)))
  other_epoch = batches(
    strategy_lib.distribute_datasets(info.strategy, make(1))
  )
  print("MARK", file=sys.stderr, flush=True)
  through_tf = batches(info.strategy.distribute_datasets_from_function(make(0)))
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(a, b))
  print(same(direct, through_tf), same(direct, other_epoch))
