"""PNG plots of a run: python -m trainer.plots MODEL_DIR

Writes MODEL_DIR/training_curves.png from metrics.jsonl: accuracy and loss
(train vs validation) per epoch as the seed's `plot_training_history` drew
them, plus the learning rate and images/s. Works while a run is still going:
it plots the epochs written so far. The evaluation figures (confusion matrix,
ROC curve) are drawn by `python -m trainer.evaluate`.
"""

import io
import sys

import matplotlib

matplotlib.use("Agg")  # No display needed: files only.
from matplotlib import ticker
import matplotlib.pyplot as plt
import numpy as np


def _save(figure, path):
  import tensorflow as tf

  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=100)
  plt.close(figure)
  with tf.io.gfile.GFile(path, "wb") as f:  # local or gs://
    f.write(buffer.getvalue())
  return path


def training_curves_figure(records):
  """The figure of accuracy, loss, learning rate and throughput per epoch.

  Args:
    records: metrics.jsonl rows, one per epoch.

  Returns:
    A matplotlib Figure (shown inline in a notebook; `training_curves`
    saves it).
  """
  epochs = [r["epoch"] for r in records]
  figure, axes = plt.subplots(2, 2, figsize=(12, 8))
  panels = [
    (
      axes[0, 0],
      "Model Accuracy",
      "Accuracy",
      [
        ("accuracy", "Training Accuracy"),
        ("val_accuracy", "Validation Accuracy"),
      ],
    ),
    (
      axes[0, 1],
      "Model Loss",
      "Loss",
      [("loss", "Training Loss"), ("val_loss", "Validation Loss")],
    ),
    (
      axes[1, 0],
      "Learning Rate",
      "Learning rate",
      [("learning_rate", "Learning Rate")],
    ),
    (
      axes[1, 1],
      "Throughput",
      "Images/s",
      [("images_per_sec", "Training images/s")],
    ),
  ]
  for axis, title, ylabel, series in panels:
    for key, label in series:
      values = [r.get(key, np.nan) for r in records]
      if not all(np.isnan(v) for v in values):
        axis.plot(epochs, values, marker="o", label=label)
    axis.set_title(title)
    axis.set_xlabel("Epoch")
    # Epochs are whole numbers: no 1.25 or 0.96 ticks on short runs.
    axis.xaxis.set_major_locator(
      ticker.MaxNLocator(integer=True, min_n_ticks=1)
    )
    axis.set_ylabel(ylabel)
    axis.legend()
  figure.tight_layout()
  return figure


def training_curves(records, path):
  """Writes `training_curves_figure(records)` to `path`; returns `path`."""
  return _save(training_curves_figure(records), path)


def confusion_matrix(matrix, class_names, path):
  matrix = np.asarray(matrix)
  size = max(4, 0.6 * len(class_names) + 2)
  figure, axis = plt.subplots(figsize=(size, size))
  image = axis.imshow(matrix, cmap="Blues")
  figure.colorbar(image, ax=axis)
  ticks = range(len(class_names))
  axis.set_xticks(ticks, class_names, rotation=45, ha="right")
  axis.set_yticks(ticks, class_names)
  axis.set_xlabel("Predicted")
  axis.set_ylabel("True")
  axis.set_title("Confusion Matrix")
  if len(class_names) <= 20:
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(matrix.shape[0]):
      for j in range(matrix.shape[1]):
        axis.text(
          j,
          i,
          str(matrix[i, j]),
          ha="center",
          va="center",
          color="white" if matrix[i, j] > threshold else "black",
        )
  figure.tight_layout()
  return _save(figure, path)


def class_summary(worst, best, confused, path):
  """For many classes, what a full confusion matrix cannot show legibly:
  the worst and best classes by accuracy and the most confused pairs.

  worst, best: [(name, accuracy, support)]; confused: most_confused()."""
  figure, (left, right) = plt.subplots(1, 2, figsize=(14, 7))
  rows = worst + [("", np.nan, 0)] + best
  names = [name for name, _, _ in rows]
  values = [value for _, value, _ in rows]
  colours = ["tab:red"] * len(worst) + ["white"] + ["tab:green"] * len(best)
  left.barh(range(len(rows)), values, color=colours)
  for y, (name, value, support) in enumerate(rows):
    if name:
      left.text(
        min(value, 0.8) + 0.01, y, f"{value:.2f} of {support}", va="center"
      )
  left.set_yticks(range(len(rows)), names)
  left.invert_yaxis()
  left.set_xlim(0, 1)
  left.set_xlabel("Accuracy (recall)")
  left.set_title(f"Worst {len(worst)} and best {len(best)} classes")
  labels = [f"{p['true']} -> {p['predicted']}" for p in confused]
  right.barh(range(len(confused)), [p["examples"] for p in confused])
  right.set_yticks(range(len(confused)), labels)
  right.invert_yaxis()
  right.set_xlabel("Examples")
  right.set_title("Most confused pairs (true -> predicted)")
  right.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  figure.tight_layout()
  return _save(figure, path)


def roc_curve(fpr, tpr, auc, path):
  figure, axis = plt.subplots(figsize=(5, 5))
  axis.plot(fpr, tpr, label=f"ROC (AUC = {auc:.4f})")
  axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="Chance")
  axis.set_xlabel("False positive rate")
  axis.set_ylabel("True positive rate")
  axis.set_title("ROC Curve")
  axis.legend(loc="lower right")
  figure.tight_layout()
  return _save(figure, path)


def plot_run(model_dir):
  """Draws MODEL_DIR/training_curves.png; returns its path, or None if empty."""
  from trainer import outputs

  records = outputs.read_metrics(model_dir)
  if not records:
    return None
  return training_curves(records, outputs.RunDir.of(model_dir).training_curves)


def main(argv):
  if len(argv) != 2:
    print("Usage: python -m trainer.plots MODEL_DIR", file=sys.stderr)
    return 2
  path = plot_run(argv[1])
  if path is None:
    print(f"Error: {argv[1]}/metrics.jsonl has no epochs yet", file=sys.stderr)
    return 1
  print(f"Wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
