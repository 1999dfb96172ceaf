"""Top-5 accuracy, --best_metric, the 'step' and 'plateau' schedules and
step-level TensorBoard curves, as a user sees them: metrics.jsonl, the epoch
lines, best/, evaluation.json and the event files."""

import math
import os

from conftest import read_jsonl
from conftest import run_probe
from conftest import run_workers
import numpy as np
import pytest
from resilience_test import _popen
from resilience_test import _wait_for_line

NUM_CLASSES = 5
TRAIN_EXAMPLES, EVAL_EXAMPLES = 256, 80
# 5 classes on the tiny model: 8 steps of 32 per epoch.
FIVE_CLASS = [
  "--config=tiny",
  f"--num_classes={NUM_CLASSES}",
  f"--train_examples={TRAIN_EXAMPLES}",
  f"--eval_examples={EVAL_EXAMPLES}",
  "--export=false",
]


@pytest.fixture(scope="session")
def five_class_data(tmp_path_factory):
  """(train pattern, eval pattern) of a small 5-class TFRecord set, written
  once: class c is a noisy image of colour c, learnable in a few steps."""
  from trainer import records
  from trainer import synthetic

  directory = tmp_path_factory.mktemp("five_classes")
  colours = np.array(
    [
      [220, 40, 40],
      [40, 200, 40],
      [40, 40, 220],
      [220, 220, 40],
      [200, 40, 220],
    ],
    np.float32,
  )
  rng = np.random.default_rng(5)

  def examples(count):
    for i in range(count):
      label = i % NUM_CLASSES
      pixels = colours[label] + rng.normal(0, 40, (40, 40, 3))
      yield records.image_example(
        synthetic.encode_jpeg(np.clip(pixels, 0, 255).astype(np.uint8)),
        label,
        40,
        40,
      ).SerializeToString()

  for split, count in (
    ("train", TRAIN_EXAMPLES),
    ("validation", EVAL_EXAMPLES),
  ):
    records.write_shard(
      str(directory / records.shard_name(split, 0, 1)), examples(count)
    )
  return (str(directory / "train-*"), str(directory / "validation-*"))


def _data_flags(data):
  return [f"--train_data={data[0]}", f"--eval_data={data[1]}"]


def _data_env(data):
  """The variables tests/probes/schedules.py reads the data's paths from."""
  return {"TRAIN_DATA": data[0], "EVAL_DATA": data[1]}


def _scalars(log_dir):
  """{tag: [(step, value), ...]} of every scalar in a TensorBoard log dir."""
  import tensorflow as tf

  found = {}
  for name in sorted(os.listdir(log_dir)):
    for event in tf.compat.v1.train.summary_iterator(
      os.path.join(log_dir, name)
    ):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == "scalars":
          found.setdefault(value.tag, []).append(
            (event.step, float(tf.make_ndarray(value.tensor)))
          )
  return found


def _epoch_means_match(points, rows, key, steps_per_epoch):
  """True if, for each epoch, the mean of its step-level points (equal-size
  windows) equals the epoch's figure in metrics.jsonl."""
  for row in rows:
    first = row["step"] - steps_per_epoch
    values = [v for step, v in points if first < step <= row["step"]]
    if not values or not math.isclose(np.mean(values), row[key], rel_tol=1e-5):
      return False
  return True


def test_step_schedule_is_the_peak_times_a_tenth_per_boundary():
  from trainer import optimization

  schedule = optimization.EpochSchedule(
    "step", 0.1, steps_per_epoch=10, total_epochs=9, boundaries=(3, 6, 8)
  )
  rates = [float(schedule(step)) for step in (0, 29, 30, 59, 60, 79, 80, 89)]
  np.testing.assert_allclose(
    rates, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 1e-4, 1e-4], rtol=1e-6
  )
  # Warmup comes first, as for cosine; the rollback multiplier scales all.
  import tensorflow as tf

  multiplier = tf.Variable(0.5)
  warm = optimization.EpochSchedule(
    "step", 0.1, 10, 9, warmup_epochs=1, multiplier=multiplier, boundaries=(3,)
  )
  np.testing.assert_allclose(
    [float(warm(s)) for s in (0, 4, 10, 30)],
    [0.005, 0.025, 0.05, 0.005],
    rtol=1e-6,
  )


@pytest.mark.multiprocess
def test_bad_flags_are_one_line_errors(run_cli):
  for args, message in (
    (
      ["--lr_schedule=step", "--lr_boundaries=30,20"],
      "Error: --lr_boundaries='30,20': epochs must be >= 1 and strictly",
    ),
    (
      ["--lr_boundaries=30,6x"],
      "Error: --lr_boundaries='30,6x': expected comma-separated whole",
    ),
    (
      ["--best_metric=val_top5_accuracy"],
      "Error: --best_metric=val_top5_accuracy: top-5 accuracy is logged at "
      "--num_classes >= 5",
    ),
  ):
    result = run_cli("trainer.task", "--config=tiny", *args, timeout=120)
    assert result.returncode != 0
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert message in lines[-1], lines[-5:]
    assert "Traceback" not in result.stderr


@pytest.mark.multiprocess
def test_val_best_metric_without_validation_data_is_an_error(
  run_cli, five_class_data, tmp_path
):
  result = run_cli(
    "trainer.task",
    *FIVE_CLASS,
    "--best_metric=val_loss",
    f"--train_data={five_class_data[0]}",
    f"--model_dir={tmp_path / 'r'}",
    timeout=120,
  )
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
    "Error: --best_metric=val_loss needs validation data (--eval_data); "
    "without it, use a training metric"
  ), result.stderr[-2000:]
  assert "Traceback" not in result.stderr


@pytest.mark.multiprocess
def test_mirrored_step_schedule_top5_best_metric_and_step_curves(
  run_cli, five_class_data, tmp_path
):
  """One mirrored x2 run: top-5 everywhere, 'step' rates, best/ by val_loss,
  batch_* TensorBoard points every 2 steps, evaluation.json's top-5."""
  model_dir = tmp_path / "run"
  result = run_cli(
    "trainer.task",
    *FIVE_CLASS,
    *_data_flags(five_class_data),
    "--cpu_devices=2",
    "--strategy=mirrored",
    "--epochs=3",
    "--lr_schedule=step",
    "--lr_boundaries=1,2",
    "--best_metric=val_loss",
    "--log_every_steps=2",
    f"--model_dir={model_dir}",
    check=True,
  )
  assert "replicas=2" in result.stdout
  rows = read_jsonl(model_dir / "metrics.jsonl")
  assert [r["step"] for r in rows] == [8, 16, 24]
  for row in rows:
    assert 0 <= row["accuracy"] <= row["top5_accuracy"] <= 1
    assert 0 <= row["val_accuracy"] <= row["val_top5_accuracy"] <= 1
    # 80 examples: a whole count of hits.
    assert (
      abs(row["val_top5_accuracy"] * 80 - round(row["val_top5_accuracy"] * 80))
      < 1e-6
    )
  epoch_lines = [
    l for l in result.stdout.splitlines() if l.startswith("epoch ")
  ]
  assert len(epoch_lines) == 3 and all(
    " - top5_accuracy " in l and " - val_top5_accuracy " in l
    for l in epoch_lines
  )
  # x0.1 at epochs 1 and 2.
  np.testing.assert_allclose(
    [r["learning_rate"] for r in rows], [3e-3, 3e-4, 3e-5], rtol=1e-5
  )
  # best/ holds the epoch of the lowest val_loss.
  best = min(rows, key=lambda r: r["val_loss"])
  assert sorted(p.name for p in (model_dir / "best").glob("ckpt-*.index")) == [
    f"ckpt-{best['step']}.index"
  ]
  finished = result.stdout.strip().splitlines()[-1]
  assert (
    f"best val_accuracy {max(r['val_accuracy'] for r in rows):.4f}, "
    f"best val_loss {best['val_loss']:.4f}, "
  ) in finished, finished
  # Step-level curves: a point every 2 steps, each the mean of its 2 steps,
  # so each epoch's points average to its metrics.jsonl figure.
  train = _scalars(model_dir / "logs" / "train")
  assert [s for s, _ in train["batch_loss"]] == list(range(2, 25, 2))
  for key in ("loss", "accuracy", "top5_accuracy"):
    assert _epoch_means_match(train[f"batch_{key}"], rows, key, 8), key
  # Negative control: a point off by 1e-3 is caught.
  planted = list(train["batch_loss"])
  planted[5] = (planted[5][0], planted[5][1] + 1e-3)
  assert not _epoch_means_match(planted, rows, "loss", 8)
  want_rates = [3e-3 * 0.1 ** ((s - 1) // 8) for s in range(2, 25, 2)]
  np.testing.assert_allclose(
    [v for _, v in train["batch_learning_rate"]], want_rates, rtol=1e-5
  )
  # Per-epoch tags stay as they were; validation stays per epoch.
  assert [s for s, _ in train["top5_accuracy"]] == [8, 16, 24]
  validation = _scalars(model_dir / "logs" / "validation")
  assert [s for s, _ in validation["top5_accuracy"]] == [8, 16, 24]
  assert not any(t.startswith("batch_") for t in validation)

  # The best checkpoint evaluated again: evaluation.json's top-5 is the
  # val_top5_accuracy of that epoch, exactly (same 80 images, summed counts).
  evaluated = run_cli(
    "trainer.evaluate", f"--model_dir={model_dir}", check=True
  )
  import json

  report = json.loads((model_dir / "eval" / "evaluation.json").read_text())
  assert report["top5_accuracy"] == pytest.approx(
    best["val_top5_accuracy"], abs=1e-9
  )
  assert "top-5 accuracy" in evaluated.stdout


@pytest.mark.multiprocess
def test_plateau_state_is_identical_on_two_workers(
  five_class_data, cache_dir, tmp_path
):
  workers = run_workers(
    "schedules:plateau_on_workers",
    cache_dir,
    tmp_path / "mw",
    timeout=400,
    EPOCHS="3",
    **_data_env(five_class_data),
  )
  assert workers[0] == workers[1]
  # Epoch 1 sets the best; epochs 2 and 3 improve by less than 100: x0.1 each.
  assert workers[0]["factor"] == pytest.approx(0.01)
  rows = read_jsonl(tmp_path / "mw" / "metrics.jsonl")
  np.testing.assert_allclose(
    [r["learning_rate"] for r in rows], [3e-3, 3e-3, 3e-4], rtol=1e-5
  )
  assert workers[0]["best"] == pytest.approx(rows[0]["val_loss"])
  # Negative control: worker 1 alone waits 100 epochs before lowering the
  # rate (its own --plateau_patience): the workers' states differ and the
  # comparison above would see it.
  control = run_workers(
    "schedules:plateau_on_workers",
    cache_dir,
    tmp_path / "control",
    timeout=400,
    env_per_worker=[{}, {"PATIENCE": "100"}],
    EPOCHS="2",
    **_data_env(five_class_data),
  )
  assert control[0]["factor"] == pytest.approx(0.1)
  assert control[1]["factor"] == 1.0 and control[0] != control[1]


@pytest.mark.multiprocess
def test_plateau_reduction_survives_kill_9(
  five_class_data, cache_dir, tmp_path
):
  model_dir = tmp_path / "k"
  args = [
    *FIVE_CLASS,
    *_data_flags(five_class_data),
    "--epochs=4",
    "--lr_schedule=plateau",
    "--plateau_monitor=loss",
    "--plateau_patience=1",
    "--plateau_min_delta=100",
    f"--model_dir={model_dir}",
  ]
  process = _popen("trainer.task", args, cache_dir)
  lines = _wait_for_line(process, r"^epoch 2/4", timeout=300)
  process.kill()  # SIGKILL: no chance to save anything more.
  process.wait()
  assert any(l.startswith("Plateau: loss has not improved") for l in lines)
  assert read_jsonl(model_dir / "metrics.jsonl")[-1]["epoch"] in (2, 3)
  resumed = _popen("trainer.task", args, cache_dir)
  output = resumed.stdout.read()
  assert resumed.wait(timeout=300) == 0, output[-3000:]
  assert "Resumed from" in output
  rows = {r["epoch"]: r for r in read_jsonl(model_dir / "metrics.jsonl")}
  # Reduced at the ends of epochs 2 and 3: the resumed epochs use the
  # reduced rates (a fresh factor of 1 would log 3e-3 again).
  np.testing.assert_allclose(
    [rows[e]["learning_rate"] for e in (1, 2, 3, 4)],
    [3e-3, 3e-3, 3e-4, 3e-5],
    rtol=1e-5,
  )


@pytest.mark.multiprocess
def test_nan_rollback_multiplier_composes_with_plateau(
  five_class_data, cache_dir, tmp_path
):
  result = run_probe(
    "schedules:nan_rollback_with_plateau",
    cache_dir,
    tmp_path / "nan",
    **_data_env(five_class_data),
  )
  assert result == {
    "status": "completed",
    "multiplier": 0.5,
    "factor": pytest.approx(0.01),
  }
  rows = read_jsonl(tmp_path / "nan" / "metrics.jsonl")
  # Epoch 3 runs at the plateau's x0.1, halved by the rollback.
  np.testing.assert_allclose(
    [r["learning_rate"] for r in rows], [3e-3, 3e-3, 1.5e-4], rtol=1e-5
  )
