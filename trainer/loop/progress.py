"""What a run says as it trains: the epoch line, the progress bar."""

import math
import sys

import keras


def _format(value):
  if isinstance(value, float):
    return "nan" if math.isnan(value) else f"{value:.4g}"
  return str(value)


def epoch_line(record, total_epochs):
  parts = [f"epoch {record['epoch']}/{total_epochs}", f"step {record['step']}"]
  for key in (
    "loss",
    "accuracy",
    "top5_accuracy",
    "auc",
    "val_loss",
    "val_accuracy",
    "val_top5_accuracy",
    "val_auc",
    "learning_rate",
    "skipped",
    "val_skipped",
  ):
    # Validation always counts skipped records; a 0 matters only to
    # --skip_corrupt runs (which also count "skipped").
    quiet = (
      key == "val_skipped" and not record.get(key) and "skipped" not in record
    )
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
      self._bar = keras.utils.Progbar(
        steps, stateful_metrics=["loss", "accuracy", "images/s"]
      )

  def update(self, step, loss, accuracy, images_per_sec):
    if self.enabled:
      self._bar.update(
        step,
        [("loss", loss), ("accuracy", accuracy), ("images/s", images_per_sec)],
      )
