"""Evaluate a trained model: python -m trainer.evaluate --model_dir=DIR

    python -m trainer.evaluate --model_dir=runs/demo
    python -m trainer.evaluate --model_dir=gs://b/runs/1 --eval_data='gs://b/data/validation-*' \
        --checkpoint=latest --strategy=mirrored

Reads DIR/config.json, restores the best checkpoint (or `latest`, `export`
for DIR/export/model.keras, or a checkpoint path), runs the evaluation set
under a strategy - every example counted exactly once - and writes to
--out (default DIR/eval): evaluation.json (accuracy, per-class precision,
recall, F1, macro averages, ROC AUC for binary models, top-5 accuracy at 5+
classes, the confusion matrix),
confusion_matrix.png and, for binary models, roc_curve.png. A table goes to
stdout.
"""

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

import keras
import tensorflow as tf

from trainer import config as config_lib
from trainer import data
from trainer import evaluation
from trainer import model as model_lib
from trainer import outputs
from trainer import plots
from trainer import strategy as strategy_lib
from trainer.errors import UserError
from trainer.errors import describe

FLAGS = flags.FLAGS
flags.DEFINE_string(
  "model_dir", None, "A training run's model dir (local or gs://)."
)
flags.DEFINE_string(
  "eval_data",
  "",
  "Evaluation TFRecords; default: the run's "
  "--eval_data (or its synthetic validation split).",
)
flags.DEFINE_string(
  "checkpoint",
  "best",
  "'best', 'latest', 'export' "
  "(MODEL_DIR/export/model.keras) or a checkpoint path.",
)
flags.DEFINE_string("out", "", "Output dir; default MODEL_DIR/eval.")
flags.DEFINE_enum("strategy", "auto", config_lib.STRATEGIES, "As for training.")
flags.DEFINE_integer("cpu_devices", 0, "As for training.")
flags.DEFINE_integer("global_batch_size", 0, "0 = the run's.")
flags.DEFINE_bool("json", False, "Print the JSON report instead of a table.")


def _load_model(config, run_dir, checkpoint, image_size):
  """The model with the requested weights; call inside strategy.scope()."""
  if checkpoint == "export":
    path = run_dir.keras_model
    if not tf.io.gfile.exists(path):
      raise UserError(f"--checkpoint=export: {path} does not exist")
    return keras.models.load_model(
      path,
      custom_objects={
        "LocalResponseNormalization": model_lib.LocalResponseNormalization
      },
    ), path
  model = model_lib.build_model(
    config.model,
    config.num_classes,
    image_size,
    config.dropout_rate,
    batch_norm_momentum=config.batch_norm_momentum,
  )
  if checkpoint in ("best", "latest"):
    directory = run_dir.best if checkpoint == "best" else run_dir.checkpoints
    path = tf.train.latest_checkpoint(directory)
    if path is None:
      raise UserError(
        f"--checkpoint={checkpoint}: no checkpoint in {directory}"
      )
  else:
    path = checkpoint
  try:
    # Every model variable must come from the checkpoint (the optimizer and
    # loop state in it are not needed here): restoring nothing would
    # evaluate random weights.
    tf.train.Checkpoint(model=model).restore(
      path
    ).expect_partial().assert_existing_objects_matched()
  except AssertionError:
    raise UserError(
      f"--checkpoint={path}: does not hold this run's model "
      f"({config.model}, {config.num_classes} classes)"
    ) from None
  except (tf.errors.OpError, ValueError) as e:
    raise UserError(
      f"--checkpoint={path}: cannot restore ({describe(e)})"
    ) from None
  return model, path


def _class_names(run_dir, eval_spec, num_classes):
  """The names the run trained with, else the eval set's manifest's."""
  path = run_dir.class_names
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      names = tuple(line.strip() for line in f if line.strip())
    if len(names) == max(2, num_classes):
      return names
  return data.class_names(eval_spec.files, num_classes)


def run(
  model_dir,
  eval_data="",
  checkpoint="best",
  out="",
  strategy="auto",
  cpu_devices=0,
  global_batch_size=0,
):
  """Evaluates a run; returns the report dict (also written as JSON)."""
  run_dir = outputs.RunDir.of(model_dir)
  if not tf.io.gfile.exists(run_dir.config):
    raise UserError(
      f"--model_dir={model_dir}: no config.json (not a training run)"
    )
  config = config_lib.load(run_dir.config)
  # The run's data and model, this machine's devices: what the training
  # machine required or was given (a GPU, a TPU, device names, a precision)
  # need not hold here.
  config = config.replace(
    strategy=strategy,
    cpu_devices=cpu_devices,
    global_batch_size=global_batch_size or config.global_batch_size,
    eval_data=eval_data or config.eval_data,
    require_accelerator="none",
    devices="",
    tpu=config.tpu if strategy == "tpu" else "",
    precision="auto",
  )
  runtime = strategy_lib.set_up(config)
  info, image_size = runtime.info, runtime.image_size
  eval_spec = data.for_strategy(
    data.resolve_eval_spec(
      config, image_size, counts_path=run_dir.example_counts
    ),
    info.name,
  )
  class_names = _class_names(run_dir, eval_spec, config.num_classes)
  with info.strategy.scope():
    model, source = _load_model(config, run_dir, checkpoint, image_size)
    eval_call = evaluation.make_eval_call(
      info.strategy, model, config.num_classes, with_confusion=True
    )
  figures = evaluation.evaluate(
    info.strategy,
    info.num_input_pipelines,
    eval_call,
    eval_spec,
    config.global_batch_size,
  )
  per_class, macro = evaluation.per_class_report(
    figures["confusion_matrix"], class_names
  )
  report = {
    "model_dir": model_dir,
    "weights": source,
    "eval_data": list(eval_spec.files),
    "num_examples": figures["count"],
    "skipped": figures["skipped"],
    "loss": figures["loss"],
    "accuracy": figures["accuracy"],
    **(
      {"top5_accuracy": figures["top5_accuracy"]}
      if "top5_accuracy" in figures
      else {}
    ),
    "macro": macro,
    "per_class": per_class,
    "class_names": list(class_names),
    "confusion_matrix": figures["confusion_matrix"],
  }
  out = out or run_dir.eval
  tf.io.gfile.makedirs(out)
  report["plots"] = [
    plots.confusion_matrix(
      figures["confusion_matrix"],
      class_names,
      os.path.join(out, "confusion_matrix.png"),
    )
  ]
  if config.num_classes == 1:
    report["roc_auc"] = figures["auc"]
    fpr, tpr = evaluation.roc_curve(figures["totals"], 1, with_confusion=True)
    report["plots"].append(
      plots.roc_curve(
        fpr, tpr, figures["auc"], os.path.join(out, "roc_curve.png")
      )
    )
  with tf.io.gfile.GFile(os.path.join(out, "evaluation.json"), "w") as f:
    json.dump(report, f, indent=2)
  return report


def format_table(report):
  lines = [
    f"{report['num_examples']} examples ({report['skipped']} skipped), "
    f"weights: {report['weights']}",
    f"accuracy {report['accuracy']:.4f}  loss {report['loss']:.4f}"
    + (
      f"  top-5 accuracy {report['top5_accuracy']:.4f}"
      if "top5_accuracy" in report
      else ""
    )
    + (f"  ROC AUC {report['roc_auc']:.4f}" if "roc_auc" in report else ""),
    "",
    f"{'class':<20}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}",
  ]
  for name, row in list(report["per_class"].items()) + [
    ("macro avg", {**report["macro"], "support": report["num_examples"]})
  ]:
    lines.append(
      f"{name:<20}{row['precision']:>10.4f}{row['recall']:>10.4f}"
      f"{row['f1']:>10.4f}{row['support']:>10}"
    )
  lines += ["", "confusion matrix (rows: true, columns: predicted)"]
  for name, row in zip(report["class_names"], report["confusion_matrix"]):
    lines.append(f"{name:<20}" + "".join(f"{v:>8}" for v in row))
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}", exitcode=2)
  if not FLAGS.model_dir:
    raise app.UsageError("--model_dir is required", exitcode=2)
  try:
    report = run(
      FLAGS.model_dir,
      FLAGS.eval_data,
      FLAGS.checkpoint,
      FLAGS.out,
      FLAGS.strategy,
      FLAGS.cpu_devices,
      FLAGS.global_batch_size,
    )
  except UserError as e:
    print(f"Error: {e}", file=sys.stderr)
    return 1
  print(json.dumps(report, indent=2) if FLAGS.json else format_table(report))
  return 0


if __name__ == "__main__":
  app.run(main)
