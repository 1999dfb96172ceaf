"""Everything a run writes to its model dir (local or gs://).

    config.json         the resolved config
    class_names.txt     one class name per line, in label order
    status.json         running | completed | early_stopped | preempted
    metrics.jsonl       one JSON object per epoch
    example_counts.json examples per input file list, when no manifest says
    logs/               TensorBoard event files (train/, validation/; train/
                        also batch_* points every --log_every_steps steps)
    checkpoints/        the last --keep_checkpoints checkpoints
    best/               the checkpoint of the best epoch by --best_metric
    export/model.keras  the best model, Keras format
    export/saved_model  the best model, SavedModel for TF Serving / Vertex AI
    export/model[-float16|-int8].tflite (+ .json check report)
                        LiteRT files, written by `python -m trainer.export`

On Vertex AI without --model_dir, checkpoints/ and best/ go under
$AIP_CHECKPOINT_DIR and logs/ is $AIP_TENSORBOARD_LOG_DIR (what Vertex
TensorBoard reads). Only the chief writes shared files. Other workers must still take part in
saving (TF requires it): their checkpoints go to a local temporary directory
that is removed at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import tensorflow as tf

from trainer import config as config_lib
from trainer import records

# The training figures TensorBoard gets every --log_every_steps steps.
STEP_FIGURES = ("loss", "accuracy", "top5_accuracy", "auc", "learning_rate")


@dataclasses.dataclass(frozen=True)
class RunDir:
  """Where each file of a run lives: the one place that knows the layout.

  root holds everything but, on Vertex AI without --model_dir, checkpoints
  (checkpoint_root = $AIP_CHECKPOINT_DIR) and TensorBoard logs (log_dir =
  $AIP_TENSORBOARD_LOG_DIR). Where they went is recorded in config.json, so
  tools that read a finished run (`RunDir.of`) find them.
  """

  root: str
  checkpoint_root: str
  log_dir: str

  @classmethod
  def for_training(cls, model_dir: str, config_name: str) -> RunDir:
    """--model_dir, else Vertex AI's AIP_* dirs when set, else runs/NAME."""
    if model_dir:
      return cls(model_dir, model_dir, os.path.join(model_dir, "logs"))
    root = os.environ.get("AIP_MODEL_DIR") or os.path.join("runs", config_name)
    return cls(
      root,
      os.environ.get("AIP_CHECKPOINT_DIR") or root,
      os.environ.get("AIP_TENSORBOARD_LOG_DIR") or os.path.join(root, "logs"),
    )

  @classmethod
  def of(cls, model_dir: str) -> RunDir:
    """A finished (or running) run's layout, read from its config.json."""
    recorded = {}
    if tf.io.gfile.exists(os.path.join(model_dir, "config.json")):
      with tf.io.gfile.GFile(os.path.join(model_dir, "config.json")) as f:
        recorded = json.load(f).get(config_lib.RUN_DIR_KEY, {})
    return cls(
      model_dir,
      recorded.get("checkpoint_root", model_dir),
      recorded.get("log_dir", os.path.join(model_dir, "logs")),
    )

  def _at(self, *parts):
    return os.path.join(self.root, *parts)

  config = property(lambda self: self._at("config.json"))
  class_names = property(lambda self: self._at("class_names.txt"))
  status = property(lambda self: self._at("status.json"))
  metrics = property(lambda self: self._at("metrics.jsonl"))
  example_counts = property(lambda self: self._at("example_counts.json"))
  training_curves = property(lambda self: self._at("training_curves.png"))
  export = property(lambda self: self._at("export"))
  keras_model = property(lambda self: self._at("export", "model.keras"))
  saved_model = property(lambda self: self._at("export", "saved_model"))
  export_class_names = property(
    lambda self: self._at("export", "class_names.txt")
  )
  # The export's markers: IN_PROGRESS is written before its first file and
  # removed after COMPLETE, which is written last (see `export_is_whole`).
  export_in_progress = property(lambda self: self._at("export", "IN_PROGRESS"))
  export_complete = property(lambda self: self._at("export", "COMPLETE"))

  def export_is_whole(self) -> bool:
    """Whether the export is whole: COMPLETE, or - for exports written
    before the markers existed - no IN_PROGRESS and every file present. A
    run killed while exporting leaves it partial (or absent), and the next
    run of the same command exports again."""
    exists = tf.io.gfile.exists
    if exists(self.export_complete):
      return True
    if exists(self.export_in_progress):
      return False
    return all(
      exists(p)
      for p in (
        os.path.join(self.saved_model, "saved_model.pb"),
        self.keras_model,
        self.export_class_names,
      )
    )

  def tflite(self, quantize: str) -> str:
    """export/model.tflite, or model-QUANTIZE.tflite (trainer.export)."""
    suffix = "" if quantize == "none" else f"-{quantize}"
    return self._at("export", f"model{suffix}.tflite")

  eval = property(lambda self: self._at("eval"))
  checkpoints = property(
    lambda self: os.path.join(self.checkpoint_root, "checkpoints")
  )
  best = property(lambda self: os.path.join(self.checkpoint_root, "best"))
  profile = property(lambda self: os.path.join(self.log_dir, "profile"))

  def summaries(self, split: str) -> str:
    return os.path.join(self.log_dir, split)

  def recorded(self) -> dict[str, str]:
    """What config.json keeps so `RunDir.of` finds the rest."""
    return {"checkpoint_root": self.checkpoint_root, "log_dir": self.log_dir}


class RunWriter:
  """config.json, status.json, metrics.jsonl and TensorBoard, chief only."""

  def __init__(self, run_dir, is_chief):
    self.run_dir = run_dir
    self.is_chief = is_chief
    self._summaries = {}
    if is_chief:
      for split in ("train", "validation"):
        self._summaries[split] = tf.summary.create_file_writer(
          run_dir.summaries(split)
        )

  def write_config(self, config, class_names, resolved):
    """config.json: the options, where the run's files went and `resolved`
    (what `auto` resolved to here, e.g. {"precision": ...})."""
    if self.is_chief:
      values = {
        **json.loads(config.to_json()),
        config_lib.RUN_DIR_KEY: self.run_dir.recorded(),
        config_lib.RESOLVED_KEY: resolved,
      }
      records.write_text_atomically(
        self.run_dir.config, json.dumps(values, indent=2, sort_keys=True) + "\n"
      )
      records.write_text_atomically(
        self.run_dir.class_names, "\n".join(class_names) + "\n"
      )

  def write_status(self, status, state):
    if self.is_chief:
      records.write_text_atomically(
        self.run_dir.status,
        json.dumps(
          {
            "status": status,
            "epoch": int(state.epoch.numpy()),
            "step": int(state.step.numpy()),
            "time": time.time(),
          }
        )
        + "\n",
      )

  def read_status(self):
    path = self.run_dir.status
    if not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path) as f:
      return json.load(f).get("status")

  def write_input_images(self, images):
    """A few augmented training inputs, to check the pipeline by eye."""
    with self._summaries["train"].as_default():
      tf.summary.image(
        "augmented_inputs", images, step=0, max_outputs=len(images)
      )
    self._summaries["train"].flush()

  def append_metrics(self, record):
    """Appends the epoch's `record`, replacing any line of that epoch or a
    later one: those came from a run killed before its epoch checkpoint,
    and this run trained the epoch again."""
    if not self.is_chief:
      return
    path = self.run_dir.metrics
    # gs:// objects can't be appended to: rewrite the whole (small) file.
    kept = []
    if tf.io.gfile.exists(path):
      with tf.io.gfile.GFile(path) as f:
        kept = [
          line
          for line in f.read().splitlines()
          if line.strip() and json.loads(line)["epoch"] < record["epoch"]
        ]
    records.write_text_atomically(
      path, "".join(f"{line}\n" for line in kept) + json.dumps(record) + "\n"
    )
    step = record["step"]
    with self._summaries["train"].as_default():
      for key in (
        "loss",
        "accuracy",
        "top5_accuracy",
        "auc",
        "learning_rate",
        "images_per_sec",
        "skipped",
      ):
        if key in record:
          tf.summary.scalar(key, record[key], step=step)
    with self._summaries["validation"].as_default():
      for key in ("loss", "accuracy", "top5_accuracy", "auc", "skipped"):
        if f"val_{key}" in record:
          tf.summary.scalar(key, record[f"val_{key}"], step=step)
    for writer in self._summaries.values():
      writer.flush()

  def write_step_figures(self, step, figures):
    """Step-level training curves under train/ as batch_loss,
    batch_accuracy, batch_top5_accuracy, batch_auc and
    batch_learning_rate (Keras' TensorBoard callback names its per-batch
    scalars so); the per-epoch ones keep their plain names."""
    if not self.is_chief:
      return
    with self._summaries["train"].as_default():
      for key in STEP_FIGURES:
        if key in figures:
          tf.summary.scalar(f"batch_{key}", figures[key], step=step)

  def close(self):
    for writer in self._summaries.values():
      writer.close()


def read_metrics(model_dir):
  """metrics.jsonl as a list of dicts, the last record per epoch."""
  path = RunDir.of(model_dir).metrics
  by_epoch = {}
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      for line in f:
        if line.strip():
          record = json.loads(line)
          by_epoch[record["epoch"]] = record
  return [by_epoch[k] for k in sorted(by_epoch)]
