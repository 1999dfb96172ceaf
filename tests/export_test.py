"""`python -m trainer.export`: .tflite files checked against the SavedModel."""

import json
import shutil
import subprocess
import sys

from conftest import REPO
from conftest import cli_env
from conftest import copy_run
from conftest import probe_command
import numpy as np
import pytest
import tensorflow as tf

from trainer import data

pytestmark = pytest.mark.multiprocess

EXPORT = "trainer.export"


# Every training precision: the export computes in float32 whichever it was
# (--export_precision's default), so TFLite converts each in every mode.
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


@pytest.fixture(scope="module", params=PRECISIONS)
def trained(request, tiny_runs, tmp_path_factory):
  """A copy of the session's tiny run in each precision, which these tests
  export into."""
  return copy_run(
    tiny_runs(request.param).model_dir,
    tmp_path_factory.mktemp("export") / "run",
  )


def _validation_set(files):
  """The validation images as serving preprocesses them, and their labels."""

  def parse(record):
    features = tf.io.parse_single_example(
      record,
      {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64),
      },
    )
    image = data.decode_for_eval(
      features["image/encoded"], 32, "random_resized_crop"
    )
    return image, features["image/class/label"]

  images, labels = zip(*tf.data.TFRecordDataset(files).map(parse))
  return np.stack(images).astype(np.float32), np.array(labels)


def _tflite_probabilities(path, images):
  from ai_edge_litert.interpreter import Interpreter

  interpreter = Interpreter(model_path=str(path))
  runner = interpreter.get_signature_runner("serve")
  return next(iter(runner(image=images).values()))[:, 0]


def _saved_model_probabilities(saved_model_dir, images):
  loaded = tf.saved_model.load(str(saved_model_dir))
  return loaded.serve(tf.constant(images)).numpy()[:, 0]


def _agreement(first, second):
  return float(np.mean((first >= 0.5) == (second >= 0.5)))


@pytest.fixture(scope="module")
def exports(trained, cache_dir):
  """{quantize: (CLI result, .tflite path, report)} for the three modes."""
  made = {}
  for quantize in ("none", "float16", "int8"):
    result = subprocess.run(
      [
        sys.executable,
        "-m",
        EXPORT,
        f"--model_dir={trained}",
        "--format=tflite",
        f"--quantize={quantize}",
      ],
      cwd=REPO,
      env=cli_env(cache_dir),
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    name = "model.tflite" if quantize == "none" else f"model-{quantize}.tflite"
    path = trained / "export" / name
    report = json.loads((trained / "export" / f"{name}.json").read_text())
    made[quantize] = (result, path, report)
  return made


@pytest.mark.parametrize(
  "quantize,min_agreement", [("none", 1.0), ("float16", 0.99), ("int8", 0.95)]
)
def test_tflite_agrees_with_the_saved_model(
  trained, exports, quantize, min_agreement
):
  result, path, report = exports[quantize]
  assert report["tflite"] == str(path) and report["quantize"] == quantize
  assert report["size_bytes"] == path.stat().st_size
  assert report["num_images"] == 128  # the tiny config's validation split
  assert report["agreement"] >= min_agreement, report
  assert f"{report['size_bytes']:,} bytes" in result.stdout
  assert "agreement" in result.stdout and "accuracy" in result.stdout

  # Checked here with the interpreter and the SavedModel, not the report's word.
  images, labels = _validation_set(report["eval_data"])
  assert len(labels) == 128
  lite = _tflite_probabilities(path, images)
  saved = _saved_model_probabilities(trained / "export" / "saved_model", images)
  assert _agreement(lite, saved) == pytest.approx(report["agreement"])
  assert report["max_probability_difference"] == pytest.approx(
    np.max(np.abs(lite - saved)), abs=1e-6
  )
  assert report["accuracy"]["tflite"] == pytest.approx(
    np.mean((lite >= 0.5) == labels)
  )
  assert report["accuracy"]["saved_model"] == pytest.approx(
    np.mean((saved >= 0.5) == labels)
  )
  if quantize == "none":
    np.testing.assert_allclose(lite, saved, atol=1e-5)


def test_each_mode_stores_what_it_promises(exports):
  """float32; float16 weights; int8 weights and activations, float32 I/O."""
  from ai_edge_litert.interpreter import Interpreter

  sizes = {}
  for quantize, (_, path, _) in exports.items():
    interpreter = Interpreter(model_path=str(path))
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    assert interpreter.get_output_details()[0]["dtype"] == np.float32
    details = interpreter.get_tensor_details()
    dtypes = {t["dtype"] for t in details}
    if quantize == "none":
      assert np.float16 not in dtypes and np.int8 not in dtypes
    elif quantize == "float16":
      assert np.float16 in dtypes and np.int8 not in dtypes
    else:
      assert np.int8 in dtypes and np.float16 not in dtypes
      float_tensors = [t["name"] for t in details if t["dtype"] == np.float32]
      # Only the input and the output stay float: every op runs in int8.
      assert len(float_tensors) == 2, float_tensors
    sizes[quantize] = path.stat().st_size
  assert 0.4 < sizes["float16"] / sizes["none"] < 0.6, sizes
  assert sizes["int8"] / sizes["none"] < 0.4, sizes


def test_the_export_computes_in_float32(trained):
  """Whatever the run trained in: no bfloat16 or float16 op in the SavedModel
  (both signatures) or the .keras model."""
  import keras

  from trainer import serving

  saved_model = str(trained / "export" / "saved_model")
  assert serving.reduced_compute_dtype(saved_model) is None
  loaded = tf.saved_model.load(saved_model)
  output = loaded.signatures["serving_default"](
    image_bytes=tf.constant([_jpeg_of_zeros()])
  )
  assert output["probabilities"].dtype == tf.float32
  model = keras.models.load_model(trained / "export" / "model.keras")
  assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}


def _jpeg_of_zeros():
  return tf.io.encode_jpeg(tf.zeros([32, 32, 3], tf.uint8)).numpy()


@pytest.mark.multiprocess
def test_export_in_the_training_precision_is_kept_and_tflite_says_why_not(
  run_cli, tmp_path
):
  """--export_precision=training keeps bfloat16 in the SavedModel (the
  negative control of the test above), and trainer.export refuses it in one
  line that names the flag."""
  from trainer import serving

  model_dir = tmp_path / "run"
  run_cli(
    "trainer.task",
    "--config=tiny",
    "--epochs=1",
    "--precision=mixed_bfloat16",
    "--export_precision=training",
    f"--model_dir={model_dir}",
    check=True,
  )
  saved_model = str(model_dir / "export" / "saved_model")
  assert serving.reduced_compute_dtype(saved_model) == "bfloat16"
  output = tf.saved_model.load(saved_model).signatures["serving_default"](
    image_bytes=tf.constant([_jpeg_of_zeros()])
  )
  assert output["probabilities"].dtype == tf.float32  # Cast at the output.
  result = run_cli(
    EXPORT, f"--model_dir={model_dir}", "--quantize=none", timeout=300
  )
  assert result.returncode == 1, result.stdout + result.stderr
  assert result.stderr.splitlines() == [
    f"Error: --model_dir={model_dir}: its SavedModel computes in bfloat16 "
    "(--export_precision=training, or an export from before float32 became "
    "the default) and TFLite converts float32 models only: remove "
    f"{model_dir}/export and run the training command again with "
    "--export_precision=float32 (the default) to export it again"
  ], result.stderr
  assert not (model_dir / "export" / "model.tflite").exists()
  # What the line says to do: the re-run trains nothing and exports again.
  shutil.rmtree(model_dir / "export")
  rerun = run_cli(
    "trainer.task",
    "--config=tiny",
    "--epochs=1",
    "--precision=mixed_bfloat16",
    f"--model_dir={model_dir}",
    check=True,
  )
  assert "holds no whole export: exporting it now" in rerun.stdout
  assert serving.reduced_compute_dtype(saved_model) is None


def test_agreement_check_catches_a_different_model(exports, tmp_path):
  """Negative control: the same comparison against another model disagrees."""
  import keras

  from trainer import model as model_lib
  from trainer import outputs
  from trainer import serving

  _, path, report = exports["int8"]
  keras.utils.set_random_seed(1)
  untrained = model_lib.build_model("tiny", 1, 32, 0.5, portable=True)
  other = outputs.RunDir(*[str(tmp_path / "other")] * 3)
  serving.export(
    untrained, other, 32, "random_resized_crop", ("horizontal", "vertical")
  )
  images, _ = _validation_set(report["eval_data"])
  lite = _tflite_probabilities(path, images)
  other = _saved_model_probabilities(other.saved_model, images)
  assert _agreement(lite, other) < 0.95


@pytest.mark.parametrize(
  "args,code,fragment",
  [
    (["--quantize=none"], 1, "no SavedModel"),
    (["--format=onnx"], 2, "tflite"),
    (["--quantize=int4"], 2, "none|float16|int8"),
  ],
)
def test_bad_input_is_one_line(run_cli, tmp_path, args, code, fragment):
  result = run_cli(EXPORT, f"--model_dir={tmp_path}", *args, timeout=120)
  assert result.returncode == code, result.stderr
  lines = [
    l
    for l in result.stderr.splitlines()
    if l.startswith(("Error:", "Usage error:"))
  ]
  assert len(lines) == 1 and fragment in lines[0], result.stderr
  assert "Traceback" not in result.stderr


def test_int8_without_validation_data_says_so(trained, run_cli, tmp_path):
  # A run trained on files without a validation split.
  run = tmp_path / "run"
  shutil.copytree(trained, run, ignore=shutil.ignore_patterns("*.tflite*"))
  config = json.loads((run / "config.json").read_text())
  config.update(train_data=str(tmp_path / "train-*"), eval_data="")
  (run / "config.json").write_text(json.dumps(config))
  result = run_cli(EXPORT, f"--model_dir={run}", "--quantize=int8", timeout=300)
  assert result.returncode == 1, result.stdout + result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith("Error:")]
  assert len(lines) == 1 and "--eval_data" in lines[0], result.stderr
  assert not (run / "export" / "model-int8.tflite").exists()
  # float16 needs no calibration: it is written, and says it was not checked.
  result = run_cli(
    EXPORT, f"--model_dir={run}", "--quantize=float16", check=True
  )
  assert "not checked" in result.stdout


def test_missing_litert_says_how_to_install(trained, cache_dir):
  # As on a machine without the package: Python refuses the import.
  command = probe_command(
    "cli:without_package",
    "ai_edge_litert",
    "trainer.export",
    f"--model_dir={trained}",
    "--quantize=none",
  )
  result = subprocess.run(
    command,
    cwd=REPO,
    env=cli_env(cache_dir),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 1
  lines = [l for l in result.stderr.splitlines() if l.startswith("Error:")]
  assert (
    len(lines) == 1
    and "pip install" in lines[0]
    and ("ai-edge-litert" in lines[0])
  ), result.stderr
