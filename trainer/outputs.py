"""Everything a run writes to its model dir (local or gs://).

    config.json         the resolved config
    class_names.txt     one class name per line, in label order
    status.json         running | completed | early_stopped | preempted
    metrics.jsonl       one JSON object per epoch
    example_counts.json examples per input file list, when no manifest says
    logs/               TensorBoard event files (train/, validation/)
    checkpoints/        the last --keep_checkpoints checkpoints
    best/               the checkpoint with the best validation accuracy
    export/model.keras  the best model, Keras format
    export/saved_model  the best model, SavedModel for TF Serving / Vertex AI

On Vertex AI without --model_dir, checkpoints/ and best/ go under
$AIP_CHECKPOINT_DIR and logs/ is $AIP_TENSORBOARD_LOG_DIR (what Vertex
TensorBoard reads). Only the chief writes shared files. Other workers must still take part in
saving (TF requires it): their checkpoints go to a local temporary directory
that is removed at the end.
"""

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time

import keras
import tensorflow as tf

from trainer import records

EXAMPLE_COUNTS = "example_counts.json"


class CheckpointSet:
  """Recent checkpoints plus the best one, chief-aware."""

  def __init__(self, checkpoint, checkpoint_dir, is_chief, task, max_to_keep):
    self.checkpoint = checkpoint
    self.is_chief = is_chief
    if is_chief:
      root = checkpoint_dir
      self._scratch = None
    else:
      self._scratch = tempfile.mkdtemp(prefix=f"alexnet-{task.replace(':', '')}-")
      root = self._scratch
    self.latest = tf.train.CheckpointManager(
        checkpoint, os.path.join(root, "checkpoints"), max_to_keep=max_to_keep)
    self.best = tf.train.CheckpointManager(
        checkpoint, os.path.join(root, "best"), max_to_keep=1)
    # Every worker restores from the chief's files: they are the shared truth.
    self._chief_latest_dir = os.path.join(checkpoint_dir, "checkpoints")
    self._chief_best_dir = os.path.join(checkpoint_dir, "best")

  def restore_latest(self):
    path = tf.train.latest_checkpoint(self._chief_latest_dir)
    if path:
      self.checkpoint.restore(path).expect_partial()
    return path

  def restore_best(self):
    path = tf.train.latest_checkpoint(self._chief_best_dir)
    if path:
      self.checkpoint.restore(path).expect_partial()
    return path

  def save(self, step):
    self.latest.save(checkpoint_number=step)

  def save_best(self, step):
    self.best.save(checkpoint_number=step)

  def cleanup(self):
    if self._scratch:
      shutil.rmtree(self._scratch, ignore_errors=True)


class RunWriter:
  """config.json, status.json, metrics.jsonl and TensorBoard, chief only."""

  def __init__(self, model_dir, log_dir, is_chief):
    self.model_dir = model_dir
    self.is_chief = is_chief
    self._summaries = {}
    if is_chief:
      for split in ("train", "validation"):
        self._summaries[split] = tf.summary.create_file_writer(
            os.path.join(log_dir, split))

  def write_config(self, config, class_names):
    if self.is_chief:
      records.write_text_atomically(os.path.join(self.model_dir, "config.json"),
                                    config.to_json() + "\n")
      records.write_text_atomically(
          os.path.join(self.model_dir, "class_names.txt"),
          "\n".join(class_names) + "\n")

  def write_status(self, status, state):
    if self.is_chief:
      records.write_text_atomically(
          os.path.join(self.model_dir, "status.json"),
          json.dumps({"status": status, "epoch": int(state.epoch.numpy()),
                      "step": int(state.step.numpy()), "time": time.time()}) + "\n")

  def read_status(self):
    path = os.path.join(self.model_dir, "status.json")
    if not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path) as f:
      return json.load(f).get("status")

  def write_input_images(self, images):
    """A few augmented training inputs, to check the pipeline by eye."""
    with self._summaries["train"].as_default():
      tf.summary.image("augmented_inputs", images, step=0,
                       max_outputs=len(images))
    self._summaries["train"].flush()

  def append_metrics(self, record):
    if not self.is_chief:
      return
    path = os.path.join(self.model_dir, "metrics.jsonl")
    # gs:// objects can't be appended to: rewrite the whole (small) file.
    existing = ""
    if tf.io.gfile.exists(path):
      with tf.io.gfile.GFile(path) as f:
        existing = f.read()
    records.write_text_atomically(path, existing + json.dumps(record) + "\n")
    step = record["step"]
    with self._summaries["train"].as_default():
      for key in ("loss", "accuracy", "auc", "learning_rate", "images_per_sec",
                  "skipped"):
        if key in record:
          tf.summary.scalar(key, record[key], step=step)
    with self._summaries["validation"].as_default():
      for key in ("loss", "accuracy", "auc", "skipped"):
        if f"val_{key}" in record:
          tf.summary.scalar(key, record[f"val_{key}"], step=step)
    for writer in self._summaries.values():
      writer.flush()

  def close(self):
    for writer in self._summaries.values():
      writer.close()


def read_metrics(model_dir):
  """metrics.jsonl as a list of dicts, the last record per epoch."""
  path = os.path.join(model_dir, "metrics.jsonl")
  by_epoch = {}
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      for line in f:
        if line.strip():
          record = json.loads(line)
          by_epoch[record["epoch"]] = record
  return [by_epoch[k] for k in sorted(by_epoch)]


def _format(value):
  if isinstance(value, float):
    return "nan" if math.isnan(value) else f"{value:.4g}"
  return str(value)


def epoch_line(record, total_epochs):
  parts = [f"epoch {record['epoch']}/{total_epochs}", f"step {record['step']}"]
  for key in ("loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc",
              "learning_rate", "skipped", "val_skipped"):
    # Validation always counts skipped records; a 0 matters only to
    # --skip_corrupt runs (which also count "skipped").
    quiet = (key == "val_skipped" and not record.get(key)
             and "skipped" not in record)
    if key in record and not quiet:
      parts.append(f"{key} {_format(record[key])}")
  parts.append(f"{record['images_per_sec']:.1f} images/s")
  return " - ".join(parts)


class Progress:
  """A progress bar with images/s and ETA on a terminal; silent otherwise."""

  def __init__(self, steps, epoch, total_epochs, is_chief):
    self.enabled = is_chief and sys.stdout.isatty()
    if self.enabled:
      print(f"Epoch {epoch + 1}/{total_epochs}")
      self._bar = keras.utils.Progbar(steps, stateful_metrics=[
          "loss", "accuracy", "images/s"])

  def update(self, step, loss, accuracy, images_per_sec):
    if self.enabled:
      self._bar.update(step, [("loss", loss), ("accuracy", accuracy),
                              ("images/s", images_per_sec)])


def weights_digest(model):
  """SHA-256 over every weight, BatchNorm moving statistics included."""
  digest = hashlib.sha256()
  for weight in sorted(model.weights, key=lambda w: w.path):
    digest.update(weight.path.encode())
    digest.update(keras.ops.convert_to_numpy(weight).tobytes())
  return digest.hexdigest()
