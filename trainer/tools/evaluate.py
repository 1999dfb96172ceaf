"""Evaluate a trained model: python -m trainer.evaluate --model_dir=DIR

    python -m trainer.evaluate --model_dir=runs/demo
    python -m trainer.evaluate --model_dir=gs://b/runs/1 --eval_data='gs://b/data/validation-*' \
        --checkpoint=latest --strategy=mirrored

Reads DIR/config.json, restores the best checkpoint (or `latest`, `export`
for DIR/export/model.keras, or a checkpoint path), runs the evaluation set
under a strategy - every example counted exactly once - and writes to
--out (default DIR/eval), the numbers first: evaluation.json (accuracy,
per-class precision, recall, F1, macro averages, ROC AUC for binary models,
top-5 accuracy at 5+ classes, the confusion matrix one row per line; above
20 classes also the worst and best classes and the most confused pairs).
Then the pictures a person can read: confusion_matrix.png up to 64 classes,
class_summary.png (worst/best classes, most confused pairs) above 20, and
roc_curve.png for binary models. stdout shows a table, or above 20 classes
a summary.
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
from trainer import errors
from trainer import evaluation
from trainer import model as model_lib
from trainer import outputs
from trainer import plots
from trainer import records
from trainer import shards
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
  try:
    figures = evaluation.evaluate(
      info.strategy,
      info.num_input_pipelines,
      eval_call,
      eval_spec,
      config.global_batch_size,
    )
  except tf.errors.DataLossError as e:
    raise UserError(
      shards.damaged_data_message(e, [("eval_data", eval_spec.files)])
    ) from None
  except tf.errors.InvalidArgumentError as e:
    # As training says it: a label out of range, or an undecodable image.
    raise UserError(
      data.label_error(e)
      or f"bad data in --eval_data ({describe(e)}); --skip_corrupt in the "
      "run's config skips undecodable records"
    ) from None
  except tf.errors.OpError as e:
    if errors.unanswered(e):
      raise UserError(errors.unanswered_message(e, resumes=False)) from None
    raise
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
  if config.num_classes == 1:
    report["roc_auc"] = figures["auc"]
  if len(class_names) > SUMMARY_ABOVE_CLASSES:
    worst, best = evaluation.extreme_classes(per_class)
    report["worst_classes"] = [list(row) for row in worst]
    report["best_classes"] = [list(row) for row in best]
    report["most_confused"] = evaluation.most_confused(
      figures["confusion_matrix"], class_names
    )
  # The numbers first: a failure while drawing must not lose them.
  report["plots"] = []
  _write_report(report, out)
  report["plots"] = _draw(report, figures, config.num_classes, out)
  _write_report(report, out)
  return report


# Above this many classes stdout and the pictures summarise (worst and best
# classes, most confused pairs); the numbers stay whole in evaluation.json.
SUMMARY_ABOVE_CLASSES = 20


def _write_report(report, out):
  """evaluation.json, readable and compact: one line per confusion row."""
  rows = report["confusion_matrix"]
  text = json.dumps({**report, "confusion_matrix": "ROWS"}, indent=2)
  matrix = (
    "[\n" + ",\n".join(f"    {json.dumps(row)}" for row in rows) + "\n  ]"
  )
  records.write_text_atomically(
    os.path.join(out, "evaluation.json"),
    text.replace('"confusion_matrix": "ROWS"', f'"confusion_matrix": {matrix}')
    + "\n",
  )


def _draw(report, figures, num_classes, out):
  """The pictures a person can read at this class count; returns their
  paths. A picture that fails is one line on stderr, never an error."""
  drawn = []
  class_names = report["class_names"]
  pictures = []
  if len(class_names) <= evaluation.MAX_CONFUSION_CLASSES:
    pictures.append(
      lambda: plots.confusion_matrix(
        figures["confusion_matrix"],
        class_names,
        os.path.join(out, "confusion_matrix.png"),
      )
    )
  if "most_confused" in report:
    pictures.append(
      lambda: plots.class_summary(
        [tuple(r) for r in report["worst_classes"]],
        [tuple(r) for r in report["best_classes"]],
        report["most_confused"],
        os.path.join(out, "class_summary.png"),
      )
    )
  if num_classes == 1:
    fpr, tpr = evaluation.roc_curve(figures["totals"], 1, with_confusion=True)
    pictures.append(
      lambda: plots.roc_curve(
        fpr, tpr, figures["auc"], os.path.join(out, "roc_curve.png")
      )
    )
  for draw in pictures:
    try:
      drawn.append(draw())
    except Exception as e:  # noqa: BLE001 - a picture is never worth the numbers.
      print(
        f"Warning: a picture could not be drawn ({describe(e)}); the "
        f"numbers are in {os.path.join(out, 'evaluation.json')}",
        file=sys.stderr,
      )
  return drawn


def format_table(report):
  """What stdout shows: the figures, then per-class rows and the confusion
  matrix when they fit a screen, else the worst and best classes and the
  most confused pairs."""
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
  ]
  if "most_confused" in report:
    return "\n".join(lines + _summary_lines(report))
  lines.append(
    f"{'class':<20}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"
  )
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


def _summary_lines(report):
  macro = report["macro"]
  lines = [
    f"{len(report['class_names'])} classes; macro precision "
    f"{macro['precision']:.4f}, recall {macro['recall']:.4f}, f1 "
    f"{macro['f1']:.4f}. Every class and the confusion matrix: "
    "evaluation.json.",
  ]
  for title, rows in (
    ("worst classes", report["worst_classes"]),
    ("best classes", report["best_classes"]),
  ):
    lines += ["", f"{title:<30}{'accuracy':>10}{'support':>10}"]
    lines += [f"{name:<30}{value:>10.4f}{n:>10}" for name, value, n in rows]
  lines += ["", f"{'most confused (true -> predicted)':<50}{'examples':>10}"]
  lines += [
    f"{pair['true'] + ' -> ' + pair['predicted']:<50}{pair['examples']:>10}"
    for pair in report["most_confused"]
  ]
  return lines


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
