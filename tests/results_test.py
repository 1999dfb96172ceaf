"""What people look at: evaluate, predict, plots, serving export, TensorBoard."""

import base64
import glob
import io
import json

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from trainer import data
from trainer import records
from trainer import synthetic

pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def trained(tiny_run, tmp_path_factory):
  """A copy of the session's tiny run (it has a profiled range), which
  these tests write evaluations into."""
  from conftest import copy_run

  return copy_run(
    tiny_run.model_dir, tmp_path_factory.mktemp("trained") / "run"
  )


@pytest.fixture(scope="module")
def fixed_set(tmp_path_factory):
  """21 labelled JPEGs (not a multiple of the batch or of the replicas)."""
  directory = tmp_path_factory.mktemp("fixed")
  rng = np.random.default_rng(123)
  labels = [i % 2 if i < 18 else 1 for i in range(21)]
  encoded = []
  for label in labels:
    buffer = io.BytesIO()
    Image.fromarray(synthetic.draw_image(rng, label, 37)).save(
      buffer, format="JPEG"
    )
    encoded.append(buffer.getvalue())
  serialized = [
    records.image_example(e, l, 37, 37).SerializeToString()
    for e, l in zip(encoded, labels)
  ]
  records.write_shard(
    str(directory / "validation-00000-of-00002"), serialized[:11]
  )
  records.write_shard(
    str(directory / "validation-00001-of-00002"), serialized[11:]
  )
  return directory, encoded, labels


def _assert_png(path, min_side=200):
  with Image.open(path) as image:
    assert image.format == "PNG"
    assert min(image.size) >= min_side, image.size
    pixels = np.asarray(image.convert("L"), np.float32)
  assert pixels.std() > 5  # something was drawn


def _keras_probabilities(model_dir, encoded):
  import keras

  model = keras.models.load_model(model_dir / "export" / "model.keras")
  images = np.stack(
    [
      data.decode_for_eval(tf.constant(e), 32, "random_resized_crop").numpy()
      for e in encoded
    ]
  )
  # In a graph, as serving and evaluation run it: in bfloat16, eager Keras
  # rounds after every op where the graph's fused kernels round once.
  return tf.function(model)(tf.constant(images)).numpy()[:, 0]


# one_device on the CPU reads the dataset directly (strategy.distribute_datasets).
@pytest.mark.parametrize(
  "strategy",
  [["--strategy=mirrored", "--cpu_devices=2"], ["--strategy=one_device"]],
)
def test_evaluate_is_exact_under_each_strategy(
  trained, fixed_set, run_cli, strategy
):
  directory, encoded, labels = fixed_set
  out = trained / f"eval-fixed-{strategy[0][11:]}"
  result = run_cli(
    "trainer.evaluate",
    f"--model_dir={trained}",
    f"--eval_data={directory}/validation-*",
    "--checkpoint=export",
    *strategy,
    "--global_batch_size=8",
    f"--out={out}",
    check=True,
  )
  report = json.loads((out / "evaluation.json").read_text())
  # By hand: the exported Keras model on the same preprocessed images.
  predicted = (_keras_probabilities(trained, encoded) >= 0.5).astype(int)
  matrix = np.zeros((2, 2), int)
  for truth, guess in zip(labels, predicted):
    matrix[truth, guess] += 1
  assert report["num_examples"] == 21 and report["skipped"] == 0
  assert report["confusion_matrix"] == matrix.tolist()
  assert report["accuracy"] == pytest.approx(np.trace(matrix) / 21)
  precision = matrix[1, 1] / max(1, matrix[:, 1].sum())
  recall = matrix[1, 1] / matrix[1].sum()
  assert report["per_class"]["vertical"]["precision"] == pytest.approx(
    precision
  )
  assert report["per_class"]["vertical"]["recall"] == pytest.approx(recall)
  assert report["per_class"]["vertical"]["support"] == 12
  assert 0.0 <= report["roc_auc"] <= 1.0
  assert "macro avg" in result.stdout and "confusion matrix" in result.stdout
  _assert_png(out / "confusion_matrix.png")
  _assert_png(out / "roc_curve.png")


def test_training_curves_png_and_plots_command(trained, run_cli, tmp_path):
  _assert_png(trained / "training_curves.png", min_side=500)
  # A run still going: only one epoch written so far.
  partial = tmp_path / "partial"
  partial.mkdir()
  first = (trained / "metrics.jsonl").read_text().splitlines()[0]
  (partial / "metrics.jsonl").write_text(first + "\n")
  result = run_cli("trainer.plots", str(partial), check=True)
  assert "training_curves.png" in result.stdout
  _assert_png(partial / "training_curves.png", min_side=500)


def test_serving_signature_takes_jpeg_bytes(trained, fixed_set):
  _, encoded, _ = fixed_set
  loaded = tf.saved_model.load(str(trained / "export" / "saved_model"))
  serve = loaded.signatures["serving_default"]
  # As a Vertex AI request carries it: base64 in JSON, decoded by the server.
  request = json.dumps(
    {
      "instances": [
        {"image_bytes": {"b64": base64.b64encode(e).decode()}}
        for e in encoded[:5]
      ]
    }
  )
  instances = [
    base64.b64decode(i["image_bytes"]["b64"])
    for i in json.loads(request)["instances"]
  ]
  output = serve(image_bytes=tf.constant(instances))
  want = _keras_probabilities(trained, encoded[:5])
  np.testing.assert_allclose(
    output["probabilities"].numpy()[:, 1], want, atol=1e-5
  )
  np.testing.assert_allclose(
    output["probabilities"].numpy().sum(axis=1), 1, rtol=1e-6
  )
  names = [n.decode() for n in output["classes"].numpy()]
  served = output["probabilities"].numpy()[:, 1]
  assert names == ["vertical" if p >= 0.5 else "horizontal" for p in served]
  assert output["scores"].numpy() == pytest.approx(
    np.maximum(served, 1 - served)
  )
  # PNG bytes work too.
  buffer = io.BytesIO()
  Image.open(io.BytesIO(encoded[0])).save(buffer, format="PNG")
  assert serve(image_bytes=tf.constant([buffer.getvalue()]))[
    "probabilities"
  ].shape == (1, 2)


def test_predict_answers_good_images_and_names_bad_ones(
  trained, fixed_set, run_cli, tmp_path
):
  _, encoded, labels = fixed_set
  for i in range(3):
    (tmp_path / f"img{i}.jpg").write_bytes(encoded[i])
  (tmp_path / "broken.jpg").write_bytes(b"not an image")
  result = run_cli(
    "trainer.predict",
    str(trained),
    str(tmp_path / "img*.jpg"),
    str(tmp_path / "broken.jpg"),
    "--json",
  )
  assert result.returncode == 1
  rows = [
    json.loads(l) for l in result.stdout.splitlines() if l.startswith("{")
  ]
  assert len(rows) == 4
  good = [r for r in rows if "class" in r]
  assert len(good) == 3 and all(0.5 <= r["probability"] <= 1 for r in good)
  bad = [r for r in rows if "error" in r]
  assert (
    bad[0]["image"].endswith("broken.jpg")
    and "Unknown image file format" in bad[0]["error"]
  )


def test_tensorboard_has_scalars_images_and_profile(trained):
  tags = set()
  for path in glob.glob(str(trained / "logs" / "*" / "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  assert {
    "loss",
    "accuracy",
    "learning_rate",
    "images_per_sec",
    "skipped",
    "augmented_inputs",
  } <= tags
  assert glob.glob(
    str(
      trained / "logs" / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"
    )
  )


def test_evaluate_refuses_a_checkpoint_without_the_model(
  trained, run_cli, tmp_path
):
  """Restoring nothing would evaluate random weights; it must fail instead."""
  unrelated = tf.train.Checkpoint(step=tf.Variable(7, dtype=tf.int64))
  path = unrelated.write(str(tmp_path / "other" / "ckpt"))
  result = run_cli(
    "trainer.evaluate",
    f"--model_dir={trained}",
    f"--checkpoint={path}",
    f"--out={tmp_path / 'eval'}",
  )
  assert result.returncode == 1, result.stdout[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("Error:")]
  assert len(errors) == 1 and f"--checkpoint={path}" in errors[0], result.stderr
  assert "model" in errors[0]
  assert not (tmp_path / "eval" / "evaluation.json").exists()


def test_training_curves_epoch_axes_have_integer_ticks():
  import matplotlib.pyplot as plt

  from trainer import plots

  for num_epochs in (1, 3, 7):
    records = [
      {
        "epoch": e,
        "accuracy": 0.5 + e / 20,
        "val_accuracy": 0.5 + e / 21,
        "loss": 1 / e,
        "val_loss": 1.1 / e,
        "learning_rate": 0.01 / e,
        "images_per_sec": 100 + e,
      }
      for e in range(1, num_epochs + 1)
    ]
    figure = plots.training_curves_figure(records)
    figure.canvas.draw()
    assert len(figure.axes) == 4
    for axis in figure.axes:
      assert axis.get_xlabel() == "Epoch"
      low, high = axis.get_xlim()
      shown = [
        (tick, label.get_text())
        for tick, label in zip(axis.get_xticks(), axis.get_xticklabels())
        if low <= tick <= high
      ]
      assert shown, (axis.get_title(), num_epochs)
      for tick, text in shown:
        assert float(tick).is_integer() and text == str(int(tick)), (
          axis.get_title(),
          num_epochs,
          shown,
        )
    plt.close(figure)


def test_evaluate_ignores_the_training_machines_devices(
  trained, run_cli, tmp_path
):
  """A run trained on a GPU or TPU machine is evaluated on this CPU."""
  import shutil

  run = tmp_path / "gpu_run"
  shutil.copytree(trained, run)
  config = json.loads((run / "config.json").read_text())
  config.update(
    require_accelerator="gpu",
    tpu="local",
    devices="/gpu:0",
    precision="mixed_float16",
  )
  config["run_dir"] = {
    "checkpoint_root": str(run),
    "log_dir": str(run / "logs"),
  }
  (run / "config.json").write_text(json.dumps(config))
  result = run_cli("trainer.evaluate", f"--model_dir={run}", "--json")
  assert result.returncode == 0, result.stderr[-2000:]
  assert json.loads(result.stdout[result.stdout.index("{") :])["accuracy"] > 0.5


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_evaluate_and_predict_a_run_of_each_precision(
  tiny_runs, fixed_set, run_cli, tmp_path, precision
):
  """Evaluation (of the export and of the best checkpoint, which evaluates
  in the run's precision) and predict agree with the exported model by hand,
  whichever precision the run trained in."""
  from conftest import copy_run

  run = copy_run(tiny_runs(precision).model_dir, tmp_path / "run")
  directory, encoded, labels = fixed_set
  by_hand = (_keras_probabilities(run, encoded) >= 0.5).astype(int)
  for checkpoint in ("export", "best"):
    out = tmp_path / f"eval-{checkpoint}"
    run_cli(
      "trainer.evaluate",
      f"--model_dir={run}",
      f"--eval_data={directory}/validation-*",
      f"--checkpoint={checkpoint}",
      f"--out={out}",
      check=True,
    )
    report = json.loads((out / "evaluation.json").read_text())
    assert report["num_examples"] == 21 and report["skipped"] == 0
    agreeing = report["accuracy"] * 21
    # bfloat16 rounding may move an image that sits at 0.5; no more.
    slack = 0 if checkpoint == "export" or precision == "float32" else 1
    assert abs(agreeing - np.sum(by_hand == np.array(labels))) <= slack
  for i in range(4):
    (tmp_path / f"img{i}.jpg").write_bytes(encoded[i])
  result = run_cli(
    "trainer.predict",
    str(run),
    str(tmp_path / "img*.jpg"),
    "--json",
    check=True,
  )
  rows = [
    json.loads(l) for l in result.stdout.splitlines() if l.startswith("{")
  ]
  names = ["vertical" if guess else "horizontal" for guess in by_hand[:4]]
  assert [r["class"] for r in sorted(rows, key=lambda r: r["image"])] == names
