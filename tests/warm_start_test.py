"""Warm start (--init_from) and fine-tuning (--freeze, --train_from), end to
end: a tiny 2-class run is fine-tuned on 4 classes, under one device,
mirrored x2 and two workers, and resumed."""

import os
import shutil
import subprocess
import sys

from conftest import REPO
from conftest import cli_env
from conftest import run_probe
from conftest import run_workers
import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import config as config_lib
from trainer import model as model_lib
from trainer import outputs
from trainer import records
from trainer import synthetic
from trainer import warm_start
from trainer.errors import UsageError
from trainer.errors import UserError

TINY = ["--config=tiny", "--steps_per_epoch=2", "--steps_per_call=2"]
FROZEN = ("conv1", "bn1")
LOADED = ("conv1", "bn1", "conv2", "bn2", "fc6")


def layer_weights(model):
  """{layer name: [arrays]} of every layer that has weights (BatchNorm's
  moving statistics included)."""
  return {
    layer.name: [np.asarray(w) for w in layer.weights]
    for layer in model.layers
    if layer.weights
  }


def checkpoint_weights(prefix, num_classes):
  """The tiny model's weights as the checkpoint at `prefix` holds them."""
  model = model_lib.build_model("tiny", num_classes, 32)
  tf.train.Checkpoint(model=model).restore(
    prefix
  ).expect_partial().assert_existing_objects_matched()
  return layer_weights(model)


def train_once(cache_dir, *args):
  """trainer.task as a user runs it (for module-scoped fixtures, which
  cannot use the run_cli fixture)."""
  result = subprocess.run(
    [sys.executable, "-m", "trainer.task", *TINY, *args],
    cwd=REPO,
    env=cli_env(cache_dir),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result


def same(a, b):
  return len(a) == len(b) and all(
    x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b)
  )


def prefix(run_dir, directory, step=None):
  if step is None:
    return tf.train.latest_checkpoint(os.path.join(run_dir, directory))
  return os.path.join(run_dir, directory, f"ckpt-{step}")


def the_line(stdout, start):
  lines = [l for l in stdout.splitlines() if l.startswith(start)]
  assert len(lines) == 1, stdout[-3000:]
  return lines[0]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, cache_dir):
  """A finished 2-class tiny run (checkpoints, best/, export/model.keras)."""
  run_dir = str(tmp_path_factory.mktemp("source") / "run")
  train_once(
    cache_dir, "--num_classes=2", "--epochs=1", f"--model_dir={run_dir}"
  )
  return run_dir


@pytest.fixture(scope="module")
def four_classes(tmp_path_factory):
  """64 training images labelled 0..3 (what the labels mean does not matter:
  the test is about which weights move)."""
  directory = str(tmp_path_factory.mktemp("four"))
  rng = np.random.default_rng(0)
  serialized = [
    records.image_example(
      synthetic.encode_jpeg(synthetic.draw_image(rng, i % 2, 32)), i % 4, 32, 32
    ).SerializeToString()
    for i in range(64)
  ]
  records.write_shard(
    os.path.join(directory, records.shard_name("train", 0, 1)), serialized
  )
  return os.path.join(directory, "train-*")


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory, cache_dir, source_run, four_classes):
  """The source run fine-tuned on 4 classes from its run dir, conv1/bn1
  frozen: (model dir, CompletedProcess)."""
  run_dir = str(tmp_path_factory.mktemp("fine") / "run")
  result = train_once(
    cache_dir,
    "--num_classes=4",
    "--epochs=1",
    f"--train_data={four_classes}",
    "--export=false",
    f"--init_from={source_run}",
    f"--freeze={','.join(FROZEN)}",
    f"--model_dir={run_dir}",
  )
  return run_dir, result


@pytest.mark.multiprocess
def test_fine_tune_loads_matching_layers_resets_head_keeps_frozen_fixed(
  source_run, fine_tuned
):
  run_dir, result = fine_tuned
  # A run dir warm-starts from its best checkpoint.
  source = checkpoint_weights(prefix(source_run, "best"), 2)
  line = the_line(result.stdout, "Warm start from")
  assert "best/ckpt-2" in line, line
  assert "loaded conv1, bn1, conv2, bn2, fc6" in line, line
  assert "reset predictions" in line and "(64, 2)" in line, line
  assert "conv1, bn1" in the_line(result.stdout, "Frozen")

  # Before the first step (the step-0 checkpoint): the source's weights.
  start = checkpoint_weights(prefix(run_dir, "checkpoints", 0), 4)
  for name in LOADED:
    assert same(start[name], source[name]), name
  assert start["predictions"][0].shape == (64, 4)
  assert source["predictions"][0].shape == (64, 2)
  assert not np.array_equal(
    start["predictions"][0][:, :2], source["predictions"][0]
  )

  # After training: frozen layers bit for bit (BatchNorm's moving statistics
  # too: inference mode), the others moved (the check's negative control).
  end = checkpoint_weights(prefix(run_dir, "checkpoints", 2), 4)
  for name in FROZEN:
    assert same(end[name], start[name]), name
  for name in ("conv2", "bn2", "fc6", "predictions"):
    assert not same(end[name], start[name]), name
  # The moving statistics of an unfrozen BatchNorm moved too.
  assert not np.array_equal(end["bn2"][2], start["bn2"][2])


@pytest.mark.multiprocess
def test_resume_ignores_init_from(run_cli, tmp_path, fine_tuned, four_classes):
  run_dir = str(tmp_path / "run")
  shutil.copytree(fine_tuned[0], run_dir)
  before = checkpoint_weights(prefix(run_dir, "checkpoints", 2), 4)
  # The path does not even exist: with checkpoints it is not read.
  args = [
    *TINY,
    "--num_classes=4",
    "--epochs=2",
    "--export=false",
    f"--train_data={four_classes}",
    "--init_from=/nonexistent/run",
    f"--freeze={','.join(FROZEN)}",
    f"--model_dir={run_dir}",
  ]
  result = run_cli("trainer.task", *args)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "--init_from=/nonexistent/run is ignored" in the_line(
    result.stdout, "--init_from"
  )
  assert "Resumed from" in result.stdout and "Warm start" not in result.stdout
  end = checkpoint_weights(prefix(run_dir, "checkpoints", 4), 4)
  for name in FROZEN:  # Still frozen after resuming.
    assert same(end[name], before[name]), name
  assert not same(end["conv2"], before["conv2"])


@pytest.mark.multiprocess
def test_keras_file_under_mirrored(run_cli, tmp_path, source_run, four_classes):
  keras_file = os.path.join(source_run, "export", "model.keras")
  source = layer_weights(keras.models.load_model(keras_file, compile=False))
  run_dir = str(tmp_path / "run")
  result = run_cli(
    "trainer.task",
    *TINY,
    "--num_classes=4",
    "--epochs=1",
    "--strategy=mirrored",
    "--cpu_devices=2",
    "--export=false",
    f"--train_data={four_classes}",
    f"--init_from={keras_file}",
    "--train_from=conv2",
    f"--model_dir={run_dir}",
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "replicas=2" in result.stdout
  assert "loaded conv1, bn1, conv2, bn2, fc6" in the_line(
    result.stdout, "Warm start from"
  )
  assert "conv1, bn1" in the_line(result.stdout, "Frozen")
  start = checkpoint_weights(prefix(run_dir, "checkpoints", 0), 4)
  end = checkpoint_weights(prefix(run_dir, "checkpoints", 2), 4)
  for name in LOADED:
    assert same(start[name], source[name]), name
  for name in FROZEN:
    assert same(end[name], source[name]), name
  assert not same(end["conv2"], source["conv2"])


@pytest.mark.multiprocess
def test_workers_load_the_same_weights(cache_dir, tmp_path, source_run):
  final = prefix(source_run, "checkpoints", 2)
  first = prefix(source_run, "checkpoints", 0)
  workers = run_workers(
    "warm_start:load_on_workers",
    cache_dir,
    tmp_path / "run",
    env_per_worker=[
      {"INIT_FROM": final, "OTHER": final},
      {"INIT_FROM": final, "OTHER": first},
    ],
  )
  assert [w["replicas"] for w in workers] == [2, 2]
  assert workers[0]["loaded"] == workers[1]["loaded"]
  assert workers[0]["other"] == workers[0]["loaded"]  # Same file again.
  assert workers[1]["other"] != workers[0]["other"]  # The control.


@pytest.mark.multiprocess
def test_unknown_layer_is_one_line_exit_2(run_cli, tmp_path):
  result = run_cli(
    "trainer.task",
    *TINY,
    "--num_classes=2",
    "--freeze=conv1,conv9",
    f"--model_dir={tmp_path / 'run'}",
    timeout=300,
  )
  assert result.returncode == 2, result.stdout[-2000:] + result.stderr
  assert result.stderr.strip() == (
    "Error: --freeze: no layer conv9 with weights in --model=tiny; valid: "
    "conv1, bn1, conv2, bn2, fc6, predictions"
  )


@pytest.mark.parametrize(
  "name,fragment",
  [
    ("nonexistent/run", "not a run dir, checkpoint or .keras file"),
    ("empty", "this dir holds no checkpoint"),
    ("missing.keras", "no such file"),
    ("not_a_model.keras", "not a Keras model file"),
  ],
)
def test_bad_init_from_names_the_path(tmp_path, name, fragment):
  """A user error (the CLI prints it as one `Error:` line, exit 1)."""
  (tmp_path / "empty").mkdir()
  (tmp_path / "not_a_model.keras").write_text("hello")
  path = str(tmp_path / name)
  config = config_lib.Config(model="tiny", init_from=path)
  run = outputs.RunDir.for_training(str(tmp_path / "new"), "test")
  with pytest.raises(UserError) as raised:
    warm_start.read_source(config, run)
  message = str(raised.value)
  assert message.startswith(f"--init_from={path}: ") and fragment in message
  assert "\n" not in message and not isinstance(raised.value, UsageError)


@pytest.mark.multiprocess
def test_flags_in_helpshort_and_format_errors_exit_2(run_cli, tmp_path):
  text = run_cli("trainer.task", "--helpshort", timeout=120).stdout
  for flag in ("--init_from", "--freeze", "--train_from"):
    assert flag in text
  assert (
    "ignored when --model_dir already holds checkpoints"
    in " ".join(text.split()).lower()
  )
  result = run_cli(
    "trainer.task",
    *TINY,
    "--freeze=conv1,,bn1",
    f"--model_dir={tmp_path / 'run'}",
    timeout=120,
  )
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip() == (
    "Error: --freeze='conv1,,bn1': expected "
    "comma-separated layer names, e.g. conv1,bn1"
  )
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
  "changes,fragment",
  [
    (dict(freeze="conv1,,bn1"), "--freeze='conv1,,bn1'"),
    (dict(freeze="conv1", train_from="conv2"), "--freeze or --train_from"),
    (dict(train_from="conv1,conv2"), "--train_from='conv1,conv2'"),
  ],
)
def test_config_checks_the_format(changes, fragment):
  with pytest.raises(UserError) as raised:
    config_lib.Config().replace(**changes)
  assert fragment in str(raised.value)


def test_train_from_freezes_the_layers_before_it():
  model = model_lib.build_model("tiny", 4, 32)
  config = config_lib.Config(model="tiny", train_from="fc6")
  assert warm_start.layers_to_freeze(model, config) == [
    "conv1",
    "bn1",
    "conv2",
    "bn2",
  ]
  with pytest.raises(
    UserError,
    match="--train_from=pool1: no such layer .*"
    "valid: conv1, bn1, conv2, bn2, fc6, predictions",
  ):
    warm_start.layers_to_freeze(model, config.replace(train_from="pool1"))


@pytest.mark.multiprocess
def test_init_from_gcs(cache_dir, tmp_path, source_run):
  import gcs_emulator

  with gcs_emulator.running(str(tmp_path / "gcs")) as gcs:
    gcs.create_bucket("alexnet-test")
    result = run_probe(
      "warm_start:init_from_gcs",
      cache_dir,
      tmp_path / "run",
      SOURCE=source_run,
      **gcs.env,
    )
  assert result["run"][0].startswith("gs://alexnet-test/source/best/ckpt-")
  assert result["run"][1] == result["local_run"][1]
  assert result["keras"][1] == result["local_keras"][1]
  assert set(result["run"][1]) == set(LOADED) | {"predictions"}
  # The control: the comparison sees other weights (the source's step 0).
  assert result["step_0"][1] != result["run"][1]
