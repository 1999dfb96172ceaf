"""Edge export: python -m trainer.export --model_dir=DIR --quantize=none|float16|int8

    python -m trainer.export --model_dir=runs/demo --format=tflite --quantize=int8

Converts DIR/export/saved_model - its `serve` signature: float32 pixels
[N, S, S, 3] in 0..255, probabilities out - with TensorFlow's converter
(tf.lite.TFLiteConverter) into a LiteRT (TensorFlow Lite) flatbuffer:

    --quantize=none     DIR/export/model.tflite          float32, as trained
    --quantize=float16  DIR/export/model-float16.tflite  float16 weights (1/2
                        the size), computed in float32 or float16 on the device
    --quantize=int8     DIR/export/model-int8.tflite     int8 weights and
                        activations (1/4 the size), calibrated on the first
                        --calibration_images validation images; input and
                        output stay float32, so it takes the same pixels as the
                        float files and returns probabilities

Then runs the file with the LiteRT interpreter (ai_edge_litert) on the run's
validation set, preprocessed exactly as serving does (data.decode_for_eval),
next to the SavedModel, and prints the file's size, the share of images on
which both predict the same class, and both accuracies. The same goes to
<file>.json beside the file.
"""

import importlib.metadata
import json
import os
import sys

from absl import app
from absl import flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
# Imports TensorFlow without its CUDA-probe and oneDNN start-up notices, so
# the command prints the same on every CPU kind.
from trainer import startup

startup.start_tensorflow()

import numpy as np
import tensorflow as tf

from trainer import config as config_lib
from trainer import data
from trainer import errors
from trainer import outputs
from trainer import records
from trainer import serving
from trainer.errors import UserError
from trainer.errors import describe

FORMATS = ("tflite",)
QUANTIZATIONS = ("none", "float16", "int8")
SIGNATURE = serving.PIXELS_SIGNATURE
INSTALL_HINT = (
  "pip install ai-edge-litert (or pip install 'alexnet-tf[tflite]')"
)

FLAGS = flags.FLAGS
flags.DEFINE_string(
  "model_dir",
  None,
  "A training run's model dir (local or gs://) with export/saved_model.",
)
flags.DEFINE_enum("format", "tflite", FORMATS, "Edge format to write.")
flags.DEFINE_enum(
  "quantize",
  "none",
  QUANTIZATIONS,
  "'none' (float32), "
  "'float16' (weights) or 'int8' (weights and activations, "
  "calibrated on validation images; float32 input/output).",
)
flags.DEFINE_string(
  "eval_data",
  "",
  "Validation TFRecords to check (and, for "
  "int8, calibrate) on; default: the run's --eval_data (or "
  "its synthetic validation split).",
)
flags.DEFINE_integer(
  "calibration_images",
  200,
  "int8: validation images the converter measures activation ranges on.",
  lower_bound=1,
)
flags.mark_flag_as_required("model_dir")


def tflite_path(model_dir, quantize):
  """Where --quantize's file goes: MODEL_DIR/export/model[-QUANTIZE].tflite."""
  return outputs.RunDir.of(model_dir).tflite(quantize)


def _interpreter_class():
  try:
    from ai_edge_litert.interpreter import Interpreter
  except ImportError:
    raise UserError(
      "the LiteRT interpreter (ai_edge_litert) is not "
      f"installed: {INSTALL_HINT}"
    ) from None
  return Interpreter


def _validation_batches(spec, batch_size=32):
  """(float32 images, labels) of every validation image once, in batches."""
  steps = data.eval_steps(spec.num_examples, 1, 1, batch_size)
  dataset = data.make_eval_dataset(
    spec, tf.distribute.InputContext(), batch_size, steps
  )
  for images, labels, weights in dataset:
    real = weights.numpy() > 0  # drop the padding that fills the last batch
    yield images.numpy()[real].astype(np.float32), labels.numpy()[real]


def convert(saved_model_dir, quantize, calibration_images=()):
  """The .tflite flatbuffer of the SavedModel's `serve` signature.

  Args:
    saved_model_dir: a SavedModel written by trainer.serving.
    quantize: one of QUANTIZATIONS.
    calibration_images: int8 only: float32 [S, S, 3] images to measure
      activation ranges on.

  Returns:
    bytes.
  """
  converter = tf.lite.TFLiteConverter.from_saved_model(
    saved_model_dir, signature_keys=[SIGNATURE]
  )
  if quantize == "float16":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
  elif quantize == "int8":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: (
      [image[np.newaxis]] for image in calibration_images
    )
    # Integer kernels only: an op that cannot be quantized fails the
    # conversion instead of silently staying float.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  return converter.convert()


def _top1(probabilities):
  if probabilities.shape[-1] == 1:  # one sigmoid unit
    return (probabilities[:, 0] >= 0.5).astype(np.int64)
  return np.argmax(probabilities, axis=-1)


def compare(flatbuffer, saved_model_dir, spec):
  """Top-1 agreement, the largest probability difference and the accuracies
  of the .tflite and the SavedModel on every image of `spec`."""
  runner = _interpreter_class()(model_content=flatbuffer).get_signature_runner(
    SIGNATURE
  )
  loaded = tf.saved_model.load(saved_model_dir)
  count = agree = lite_correct = saved_correct = 0
  largest_difference = 0.0
  for images, labels in _validation_batches(spec):
    lite_probabilities = next(iter(runner(image=images).values()))
    saved_probabilities = loaded.serve(tf.constant(images)).numpy()
    largest_difference = max(
      largest_difference,
      float(np.max(np.abs(lite_probabilities - saved_probabilities))),
    )
    lite, saved = _top1(lite_probabilities), _top1(saved_probabilities)
    count += len(labels)
    agree += int(np.sum(lite == saved))
    lite_correct += int(np.sum(lite == labels))
    saved_correct += int(np.sum(saved == labels))
  return {
    "num_images": count,
    "agreement": agree / count,
    "max_probability_difference": largest_difference,
    "accuracy": {
      "tflite": lite_correct / count,
      "saved_model": saved_correct / count,
    },
  }


def _directory_bytes(path):
  return sum(
    tf.io.gfile.stat(os.path.join(root, name)).length
    for root, _, names in tf.io.gfile.walk(path)
    for name in names
  )


def run(model_dir, quantize="none", eval_data="", calibration_images=200):
  """Writes the .tflite and its JSON report; returns the report dict."""
  _interpreter_class()  # Say it is missing before spending a conversion.
  run_dir = outputs.RunDir.of(model_dir)
  saved_model_dir = run_dir.saved_model
  if not tf.io.gfile.exists(os.path.join(saved_model_dir, "saved_model.pb")):
    raise UserError(
      f"--model_dir={model_dir}: no SavedModel in "
      f"{saved_model_dir} (a run exports it when it completes)"
    )
  if not tf.io.gfile.exists(run_dir.config):
    raise UserError(
      f"--model_dir={model_dir}: no config.json (not a training run)"
    )
  reduced = serving.reduced_compute_dtype(saved_model_dir, SIGNATURE)
  if reduced:  # The converter would fail, after pages of MLIR errors.
    raise UserError(
      f"--model_dir={model_dir}: its SavedModel computes in {reduced} "
      "(--export_precision=training, or an export from before float32 "
      "became the default) and TFLite converts float32 models only: remove "
      f"{outputs.RunDir.of(model_dir).export} and run the training command "
      "again with --export_precision=float32 (the default) to export it "
      "again"
    )
  config = config_lib.load(run_dir.config)
  config = config.replace(eval_data=eval_data or config.eval_data)
  image_size = config_lib.image_size(config)
  try:
    spec = data.resolve_eval_spec(
      config, image_size, counts_path=run_dir.example_counts
    )
  except UserError as e:
    if quantize == "int8":
      raise UserError(
        f"--quantize=int8 calibrates on validation images: {e}"
      ) from None
    spec = None
  calibration = []
  if quantize == "int8":
    for images, _ in _validation_batches(spec):
      calibration.extend(images[: calibration_images - len(calibration)])
      if len(calibration) == calibration_images:
        break
  try:
    flatbuffer = convert(saved_model_dir, quantize, calibration)
  except (
    Exception
  ) as e:  # The converter raises bare Exceptions (ConverterError).
    raise UserError(
      f"converting {saved_model_dir} failed: {describe(e)}"
    ) from None
  path = tflite_path(model_dir, quantize)
  records.write_bytes_atomically(path, flatbuffer)
  report = {
    "tflite": path,
    "format": "tflite",
    "quantize": quantize,
    "size_bytes": len(flatbuffer),
    "saved_model": saved_model_dir,
    "saved_model_bytes": _directory_bytes(saved_model_dir),
    "converter": f"tf.lite.TFLiteConverter (TensorFlow {tf.__version__})",
    "interpreter": f"ai_edge_litert {importlib.metadata.version('ai-edge-litert')}",
    "calibration_images": len(calibration),
    "eval_data": list(spec.files) if spec else [],
    "num_images": 0,
    "agreement": None,
    "max_probability_difference": None,
    "accuracy": None,
  }
  if spec:
    report.update(compare(flatbuffer, saved_model_dir, spec))
  records.write_text_atomically(
    path + ".json", json.dumps(report, indent=2) + "\n"
  )
  return report


def format_summary(report):
  lines = [
    f"Wrote {report['tflite']}: {report['size_bytes']:,} bytes "
    f"(SavedModel {report['saved_model_bytes']:,} bytes)"
  ]
  if report["agreement"] is None:
    lines.append(
      "Agreement with the SavedModel not checked: no validation "
      "data (pass --eval_data)."
    )
  else:
    accuracy = report["accuracy"]
    lines += [
      f"Top-1 agreement with the SavedModel: {report['agreement']:.2%} "
      f"of {report['num_images']} validation images (probabilities "
      f"differ by at most {report['max_probability_difference']:.2g})",
      f"Top-1 accuracy: tflite {accuracy['tflite']:.4f}, SavedModel "
      f"{accuracy['saved_model']:.4f}",
    ]
  lines.append(f"Report: {report['tflite']}.json")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(
      f"Unexpected arguments: {argv[1:]}", exitcode=errors.USAGE_EXIT_CODE
    )
  try:
    report = run(
      FLAGS.model_dir, FLAGS.quantize, FLAGS.eval_data, FLAGS.calibration_images
    )
  except UserError as e:
    print(f"Error: {e}", file=sys.stderr)
    return 1
  print(format_summary(report))
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=errors.parse_flags)
