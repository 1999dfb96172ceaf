"""`python -m trainer.task` end to end, in a subprocess, as a user runs it."""

import json
import re

from conftest import copy_run
from conftest import read_jsonl
import numpy as np
import pytest

TINY = ["--config=tiny"]

# What TensorFlow prints on a machine without NVIDIA's driver and no user can
# act on: CUDA probing, absl's note on its own set-up, and a tf.data warning
# about an iterator of TensorFlow's making.
NO_GPU_NOISE = (
  "absl::InitializeLog",
  "Could not find cuda drivers",
  "failed call to cuInit",
  "GeneratorDatasetOp",
)


@pytest.mark.multiprocess
def test_tiny_run_writes_every_output(tiny_run):
  model_dir = tiny_run.model_dir
  # The banner names strategy, replicas, batch sizes, precision and versions.
  banner = next(
    l for l in tiny_run.stdout.splitlines() if l.startswith("task=")
  )
  for word in (
    "strategy=one_device",
    "replicas=1",
    "global_batch=32",
    "per_replica_batch=32",
    "precision=",
    "tf=2.",
    "keras=3.",
  ):
    assert word in banner
  assert "built-in synthetic" in tiny_run.stderr + tiny_run.stdout

  config = json.loads((model_dir / "config.json").read_text())
  assert config["model"] == "tiny" and config["global_batch_size"] == 32
  status = json.loads((model_dir / "status.json").read_text())
  assert status["status"] == "completed" and status["epoch"] == 3

  rows = read_jsonl(model_dir / "metrics.jsonl")
  assert [r["epoch"] for r in rows] == [1, 2, 3]
  for row in rows:
    for key in (
      "step",
      "loss",
      "accuracy",
      "val_loss",
      "val_accuracy",
      "learning_rate",
      "images_per_sec",
      "auc",
      "val_auc",
    ):
      assert np.isfinite(row[key]), (key, row)
  assert rows[-1]["step"] == 3 * 16

  assert (model_dir / "best" / "checkpoint").exists()
  assert (model_dir / "checkpoints" / "checkpoint").exists()
  events = list((model_dir / "logs").rglob("events.out.tfevents.*"))
  assert {p.parent.name for p in events} == {"train", "validation"}

  import keras
  import tensorflow as tf

  model = keras.models.load_model(model_dir / "export" / "model.keras")
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8)
  served = tf.saved_model.load(str(model_dir / "export" / "saved_model"))
  # Compare graph with graph: in bfloat16, eager Keras rounds after every op
  # where the graph's fused kernels round once (differences up to ~1e-2).
  images = tf.constant(images, tf.float32)
  np.testing.assert_allclose(
    served.serve(images), tf.function(model)(images), atol=1e-5
  )


@pytest.mark.multiprocess
def test_first_run_output_is_clean_and_ends_with_a_summary_line(tiny_run):
  # The shared run is a user's first: the CLI's own log level, three epochs
  # (the tf.data warning came with each new training iterator).
  output = tiny_run.stdout + tiny_run.stderr
  banner = next(
    l for l in tiny_run.stdout.splitlines() if l.startswith("task=")
  )
  if "devices=[CPU:0]" in banner:  # A GPU's input iterator is TensorFlow's.
    for noise in NO_GPU_NOISE:
      assert noise not in output, output[-3000:]
  # Without --skip_corrupt, a count of skipped records is always 0.
  assert "skipped" not in tiny_run.stdout
  last = tiny_run.stdout.splitlines()[-1]
  finished = re.fullmatch(
    r"Finished: completed - 3 epochs, step 48, best val_accuracy "
    r"(\d\.\d{4}), exported to (\S+), weights sha256 ([0-9a-f]{64})",
    last,
  )
  assert finished, last
  best = max(
    r["val_accuracy"] for r in read_jsonl(tiny_run.model_dir / "metrics.jsonl")
  )
  assert finished[1] == f"{best:.4f}"
  assert finished[2] == str(tiny_run.model_dir / "export")


# float16 takes the loss-scaling path (one shared skip decision per step).
@pytest.mark.multiprocess
@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_mirrored_on_two_logical_cpus_learns(run_cli, tmp_path, precision):
  model_dir = tmp_path / "mirrored"
  result = run_cli(
    "trainer.task",
    *TINY,
    "--strategy=mirrored",
    "--cpu_devices=2",
    "--epochs=6",
    f"--precision={precision}",
    f"--model_dir={model_dir}",
    check=True,
  )
  assert f"precision={precision}" in result.stdout
  import tensorflow as tf

  names = tf.train.load_checkpoint(
    str(model_dir / "checkpoints")
  ).get_variable_to_shape_map()
  # float16 trains with dynamic loss scaling, float32 without.
  assert any("dynamic_scale" in n for n in names) == (
    precision == "mixed_float16"
  )
  assert "strategy=mirrored" in result.stdout
  assert (
    "replicas=2" in result.stdout and "per_replica_batch=16" in result.stdout
  )
  rows = read_jsonl(model_dir / "metrics.jsonl")
  assert rows[-1]["loss"] < 0.8 * rows[0]["loss"], rows
  assert rows[-1]["val_accuracy"] >= 0.8, rows


@pytest.mark.multiprocess
def test_second_run_of_a_finished_dir_trains_nothing(
  tiny_run, run_cli, tmp_path
):
  model_dir = copy_run(tiny_run.model_dir, tmp_path / "again")
  rows = (model_dir / "metrics.jsonl").read_text()
  again = run_cli(
    "trainer.task", *_same_run(tiny_run), f"--model_dir={model_dir}", check=True
  )
  assert "Nothing to train" in again.stdout, again.stdout
  assert "Training " not in again.stdout
  assert (model_dir / "metrics.jsonl").read_text() == rows


def _same_run(run):
  """The flags of `run` (its precision among them) but its --model_dir."""
  return [a for a in run.args if not a.startswith("--model_dir=")]


@pytest.mark.multiprocess
def test_resuming_with_another_checkpoint_layout_is_one_line(
  tiny_run, run_cli, tmp_path
):
  # Weight averages would load into the optimizer's slots by position.
  model_dir = copy_run(tiny_run.model_dir, tmp_path / "layout")
  rows = (model_dir / "metrics.jsonl").read_text()
  result = run_cli(
    "trainer.task",
    *_same_run(tiny_run),
    "--epochs=4",
    "--ema_decay=0.99",
    f"--model_dir={model_dir}",
  )
  assert result.returncode == 1, result.stdout[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("Error:")]
  assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
  assert errors[0].startswith("Error: --ema_decay=0.99 differs from the 0.0 ")
  assert "--ema_decay=0.0" in errors[0]
  assert (model_dir / "metrics.jsonl").read_text() == rows


def test_every_checkpoint_layout_option_is_checked_on_resume():
  import configs
  from trainer import config as config_lib

  saved = configs.get_config("tiny")
  # Negative control: what may change between restarts does not conflict.
  assert (
    config_lib.resume_conflict(
      saved,
      saved.replace(
        epochs=9, learning_rate=0.1, ema_decay=0.0, strategy="mirrored"
      ),
    )
    is None
  )
  assert (
    config_lib.resume_conflict(
      saved.replace(ema_decay=0.9), saved.replace(ema_decay=0.999)
    )
    is None
  )
  for changes in (
    dict(model="seed"),
    dict(num_classes=3),
    dict(optimizer="sgd"),
    dict(freeze="conv1"),
    dict(train_from="conv2"),
    dict(image_size=64),
    dict(ema_decay=0.9),
  ):
    flag = "--" + next(iter(changes))
    message = config_lib.resume_conflict(saved, saved.replace(**changes))
    assert message and message.startswith(flag + "="), (changes, message)


@pytest.mark.multiprocess
def test_early_stopping_stops_and_a_rerun_trains_nothing(run_cli, tmp_path):
  model_dir = tmp_path / "early"
  # Validation accuracy reaches its ceiling (1.0) within a few epochs, after
  # which it cannot improve: patience 1 must stop the run well before 12.
  args = [
    *TINY,
    "--epochs=12",
    "--early_stopping_monitor=val_accuracy",
    "--early_stopping_patience=1",
    f"--model_dir={model_dir}",
  ]
  first = run_cli("trainer.task", *args, check=True)
  assert (
    "Early stopping: val_accuracy has not improved for 1 epochs" in first.stdout
  )
  status = json.loads((model_dir / "status.json").read_text())
  assert status["status"] == "early_stopped" and status["epoch"] < 12, status
  rows = (model_dir / "metrics.jsonl").read_text()
  again = run_cli("trainer.task", *args, check=True)
  assert "Nothing to train" in again.stdout, again.stdout
  assert (model_dir / "metrics.jsonl").read_text() == rows
  assert (
    json.loads((model_dir / "status.json").read_text())["status"]
    == "early_stopped"
  )


@pytest.mark.multiprocess
@pytest.mark.parametrize(
  "flag,fragment",
  [
    ("--strategy=gpus", "auto|one_device|mirrored|multi_worker|tpu"),
    ("--precision=fp8", "auto|float32|mixed_bfloat16|mixed_float16"),
    ("--model=vgg", "seed|seed_same|original|tiny"),
    ("--config=nope", "demo"),
    ("--epochs=many", "epochs"),
  ],
)
def test_bad_flag_is_usage_error_listing_valid_values(run_cli, flag, fragment):
  result = run_cli("trainer.task", flag, timeout=120)
  assert result.returncode == 2, result.stderr
  assert fragment in result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.multiprocess
@pytest.mark.parametrize(
  "args,fragment",
  [
    (
      ["--strategy=mirrored", "--cpu_devices=3", "--global_batch_size=32"],
      "--global_batch_size=32 is not divisible by the 3 replicas",
    ),
    (["--strategy=tpu"], "--strategy=tpu: no TPU found"),
    (
      ["--strategy=mirrored", "--devices=/gpu:0,/gpu:1"],
      "--devices: /gpu:0, /gpu:1 not found",
    ),
    (["--strategy=multi_worker"], "needs TF_CONFIG"),
    (
      ["--train_data=/nonexistent/train-*"],
      "--train_data='/nonexistent/train-*' matches no files",
    ),
    (["--epochs=0"], "--epochs must be >= 1"),
    (
      ["--strategy=tpu", "--tpu=local"],
      "--strategy=tpu --tpu=local: cannot reach the TPU",
    ),
    (
      [
        "--strategy=tpu",
        "--tpu=grpc://127.0.0.1:1",
        "--train_data=gs://b/train-*",
      ],
      "--model_dir=/tmp/never-written is on this machine, but --tpu=grpc://127.0.0.1:1 is a remote TPU",
    ),
    (["--profile_steps=9,3"], "--profile_steps='9,3'"),
    (["--data_service=vertex"], "--data_service=vertex needs a Vertex AI job"),
    (
      ["--data_service=http://dispatcher"],
      "--data_service='http://dispatcher'",
    ),
    (
      ["--early_stopping_monitor=val_loss", "--synthetic_eval_examples=0"],
      "--early_stopping_monitor=val_loss needs validation data",
    ),
  ],
)
def test_runtime_errors_are_one_line(run_cli, args, fragment):
  result = run_cli(
    "trainer.task", *TINY, *args, "--model_dir=/tmp/never-written", timeout=300
  )
  assert result.returncode == 1, result.stdout + result.stderr
  error_lines = [
    l for l in result.stderr.splitlines() if l.startswith("Error:")
  ]
  assert len(error_lines) == 1 and fragment in error_lines[0], result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.multiprocess
def test_unwritable_model_dir_names_the_path(run_cli, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  result = run_cli(
    "trainer.task", *TINY, f"--model_dir={blocker}/run", timeout=300
  )
  assert result.returncode == 1
  assert f"--model_dir={blocker}/run: not writable" in result.stderr


@pytest.mark.multiprocess
def test_helpshort_reads_like_a_manual(run_cli):
  result = run_cli("trainer.task", "--helpshort", timeout=120)
  text = result.stdout + result.stderr
  for flag in (
    "--strategy",
    "--precision",
    "--model",
    "--train_data",
    "--global_batch_size",
    "--model_dir",
    "--config",
    "--cpu_devices",
  ):
    assert flag in text
  assert "[Distribution]" in text and "when 'auto'" not in text


@pytest.mark.multiprocess
def test_named_config_sets_defaults_and_flags_override(run_cli):
  result = run_cli(
    "trainer.task", "--config=cats_vs_dogs", "--helpshort", timeout=120
  )
  text = result.stdout + result.stderr
  assert "(default: '128')" in text  # cats_vs_dogs global batch


@pytest.mark.multiprocess
def test_vertex_output_dirs_are_used_without_model_dir(run_cli, tmp_path):
  """Vertex AI sets AIP_*_DIR from the job's base output dir."""
  env = {
    "AIP_MODEL_DIR": str(tmp_path / "model"),
    "AIP_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
    "AIP_TENSORBOARD_LOG_DIR": str(tmp_path / "logs"),
  }
  run_cli("trainer.task", *TINY, "--epochs=1", env=env, check=True)
  assert (tmp_path / "model" / "metrics.jsonl").exists()
  assert (
    tmp_path / "model" / "export" / "saved_model" / "saved_model.pb"
  ).exists()
  assert (tmp_path / "checkpoints" / "checkpoints" / "checkpoint").exists()
  assert (tmp_path / "checkpoints" / "best" / "checkpoint").exists()
  assert list((tmp_path / "logs" / "train").glob("events.out.tfevents.*"))
  # Tools reading the run find its checkpoints where config.json says they went.
  result = run_cli(
    "trainer.evaluate",
    f"--model_dir={tmp_path / 'model'}",
    "--json",
    check=True,
  )
  report = json.loads(result.stdout[result.stdout.index("{") :])
  assert report["weights"].startswith(str(tmp_path / "checkpoints" / "best"))


@pytest.mark.multiprocess
def test_skip_corrupt_reports_skipped_records_per_epoch(run_cli, tmp_path):
  import io

  from PIL import Image

  from trainer import records

  rng = np.random.default_rng(0)
  serialized = []
  for i in range(66):
    if i in (5, 40):
      encoded = b"\xff\xd8 truncated jpeg"
    else:
      buffer = io.BytesIO()
      Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
        buffer, format="JPEG"
      )
      encoded = buffer.getvalue()
    serialized.append(
      records.image_example(encoded, i % 2, 40, 40).SerializeToString()
    )
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  records.write_shard(str(data_dir / "train-00000-of-00001"), serialized)
  args = [
    "--config=tiny",
    f"--train_data={data_dir}",
    "--epochs=1",
    "--steps_per_epoch=2",
    "--shuffle_buffer=1",
    f"--model_dir={tmp_path / 'run'}",
  ]
  strict = run_cli("trainer.task", *args)
  assert strict.returncode == 1
  assert "bad input data" in strict.stderr and "--skip_corrupt" in strict.stderr
  lenient = run_cli(
    "trainer.task",
    *args,
    "--skip_corrupt",
    f"--model_dir={tmp_path / 'run2'}",
    check=True,
  )
  row = read_jsonl(tmp_path / "run2" / "metrics.jsonl")[0]
  assert row["skipped"] == 2, row
  assert "skipped 2" in lenient.stdout


@pytest.mark.multiprocess
def test_remote_tpu_found_by_auto_rejects_local_paths(run_cli):
  result = run_cli(
    "trainer.task",
    *TINY,
    "--train_data=gs://b/train-*",
    "--model_dir=/tmp/never-written",
    env={"TPU_NAME": "grpc://127.0.0.1:1"},
    timeout=120,
  )
  assert result.returncode == 1, result.stderr
  assert (
    "Error: --model_dir=/tmp/never-written is on this machine, but "
    "--tpu=grpc://127.0.0.1:1 is a remote TPU"
  ) in result.stderr


@pytest.mark.multiprocess
def test_label_out_of_range_is_one_line_even_with_skip_corrupt(
  run_cli, tmp_path
):
  from trainer import records
  from trainer import synthetic

  data_dir = tmp_path / "data"
  data_dir.mkdir()
  image = synthetic.encode_jpeg(np.zeros((40, 40, 3), np.uint8))
  records.write_shard(
    str(data_dir / "train-00000-of-00001"),
    [records.image_example(image, 2, 40, 40).SerializeToString()] * 40,
  )
  for extra in ([], ["--skip_corrupt"]):
    result = run_cli(
      "trainer.task",
      *TINY,
      f"--train_data={data_dir}",
      "--epochs=1",
      "--steps_per_epoch=1",
      f"--model_dir={tmp_path / 'run'}",
      *extra,
    )
    assert result.returncode == 1, result.stdout[-2000:]
    errors = [l for l in result.stderr.splitlines() if l.startswith("Error:")]
    assert errors == [
      f"Error: label 2 outside [0, 2) in {data_dir}/train-00000-of-00001 "
      "(after --label_offset=0); labels that start at 1 need "
      "--label_offset=1"
    ], result.stderr[-2000:]


def _run_config(model_dir):
  """The options of a run's config.json (without the layout it records)."""
  values = json.loads((model_dir / "config.json").read_text())
  assert values.pop("run_dir")["checkpoint_root"] == str(model_dir)
  return values


@pytest.mark.multiprocess
def test_config_json_of_a_run_reruns_it_exactly(run_cli, tmp_path):
  first = tmp_path / "first"
  run_cli(
    "trainer.task",
    *TINY,
    "--epochs=1",
    "--steps_per_epoch=2",
    "--learning_rate=0.002",
    "--seed=7",
    f"--model_dir={first}",
    check=True,
  )
  original = _run_config(first)
  assert original["config"] == "tiny"

  again = tmp_path / "again"
  run_cli(
    "trainer.task",
    f"--config={first / 'config.json'}",
    f"--model_dir={again}",
    check=True,
  )
  rerun = _run_config(again)
  assert rerun["model_dir"] == str(again)
  assert {**rerun, "model_dir": None} == {**original, "model_dir": None}

  # Negative control, and flags still override the file's values.
  changed = tmp_path / "changed"
  run_cli(
    "trainer.task",
    f"--config={first / 'config.json'}",
    "--learning_rate=0.005",
    f"--model_dir={changed}",
    check=True,
  )
  differing = {k for k, v in _run_config(changed).items() if original[k] != v}
  assert differing == {"learning_rate", "model_dir"}


@pytest.mark.multiprocess
def test_python_config_module(run_cli, tmp_path):
  module = tmp_path / "short_tiny.py"
  module.write_text(
    '"""The tiny config, one short epoch."""\n'
    "import configs\n\n"
    "def get_config():\n"
    "  return configs.get_config('tiny').replace(\n"
    "      epochs=1, steps_per_epoch=2, learning_rate=0.002)\n"
  )
  model_dir = tmp_path / "run"
  run_cli(
    "trainer.task",
    f"--config={module}",
    "--seed=5",
    f"--model_dir={model_dir}",
    check=True,
  )
  config = _run_config(model_dir)
  assert config["config"] == str(module)
  assert config["model"] == "tiny" and config["epochs"] == 1
  assert config["learning_rate"] == 0.002 and config["seed"] == 5
  assert read_jsonl(model_dir / "metrics.jsonl")[-1]["step"] == 2


@pytest.mark.multiprocess
@pytest.mark.parametrize(
  "name,content,fragment",
  [
    ("missing.json", None, "No such file"),
    ("missing.py", None, "No such file"),
    ("broken.json", "{not json", "not valid JSON"),
    ("unknown.json", '{"epochs": 1, "warp_speed": 9}', "warp_speed"),
    ("typed.json", '{"epochs": "three"}', "epochs"),
    ("empty.py", "X = 1\n", "get_config"),
    ("raises.py", "def get_config():\n  return 1 / 0\n", "ZeroDivisionError"),
    ("wrong.py", "def get_config():\n  return {'epochs': 1}\n", "Config"),
    ("config.yaml", "epochs: 1\n", "config.yaml"),
  ],
)
def test_bad_config_file_is_one_line_usage_error(
  run_cli, tmp_path, name, content, fragment
):
  path = tmp_path / name
  if content is not None:
    path.write_text(content)
  result = run_cli(
    "trainer.task",
    f"--config={path}",
    f"--model_dir={tmp_path / 'run'}",
    timeout=120,
  )
  assert result.returncode == 2, result.stdout + result.stderr
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, result.stderr
  assert str(path) in lines[0] and fragment in lines[0], lines[0]
  assert not (tmp_path / "run").exists()
