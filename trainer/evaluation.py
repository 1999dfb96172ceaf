"""Exact evaluation under any strategy, and the figures a report needs.

Used by the training loop (validation every epoch) and by
`python -m trainer.evaluate`. Every example is counted exactly once: the eval
pipelines pad with weight-0 examples (see data.make_eval_dataset) and the
figures come from summed counts (see metrics.py).
"""

import numpy as np
import tensorflow as tf

from trainer import data
from trainer import metrics
from trainer import strategy as strategy_lib

MAX_CONFUSION_CLASSES = 64  # Beyond this the matrix costs more than it tells.


def make_eval_step(model, num_classes, with_confusion):
  """One replica's step: function(images, labels, weights) -> statistics."""

  def replica_step(images, labels, weights):
    probabilities = model(images, training=False)
    per_example = metrics.loss_per_example(labels, probabilities, num_classes)
    return metrics.batch_stats(
      labels, probabilities, per_example, num_classes, weights, with_confusion
    )

  return replica_step


def make_eval_call(strategy, model, num_classes, with_confusion=None):
  """A compiled function(iterator, num_steps) -> summed statistics."""
  if with_confusion is None:
    with_confusion = max(2, num_classes) <= MAX_CONFUSION_CLASSES
  size = metrics.StatsLayout(num_classes, with_confusion).size
  replica_step = make_eval_step(model, num_classes, with_confusion)

  @tf.function
  def eval_call(iterator, num_steps):
    totals = tf.zeros([size], tf.float32)
    for _ in tf.range(num_steps):
      images, labels, weights = next(iterator)
      totals += strategy.reduce(
        "SUM",
        strategy.run(replica_step, args=(images, labels, weights)),
        axis=None,
      )
    return totals

  eval_call.with_confusion = with_confusion
  eval_call.num_classes = num_classes
  return eval_call


def evaluate(strategy, num_pipelines, eval_call, spec, global_batch_size):
  """Figures over every example of `spec`: loss, accuracy, count, auc, ...

  Also returns `skipped`: examples the set holds that were not evaluated
  (non-zero only with --skip_corrupt).
  """
  replicas = strategy.num_replicas_in_sync
  steps = data.eval_steps(
    spec.num_examples, num_pipelines, replicas, global_batch_size // replicas
  )
  dataset = strategy_lib.distribute_datasets(
    strategy,
    lambda ctx: data.make_eval_dataset(spec, ctx, global_batch_size, steps),
  )
  totals = eval_call(iter(dataset), tf.constant(steps)).numpy()
  figures = metrics.summarize(
    totals, eval_call.num_classes, eval_call.with_confusion
  )
  figures["skipped"] = spec.num_examples - figures["count"]
  figures["totals"] = totals
  return figures


def per_class_report(confusion, class_names):
  """Precision, recall, F1 and support per class, plus macro averages."""
  confusion = np.asarray(confusion, np.float64)
  true_positive = np.diag(confusion)
  predicted = confusion.sum(axis=0)
  actual = confusion.sum(axis=1)
  with np.errstate(divide="ignore", invalid="ignore"):
    precision = np.where(predicted > 0, true_positive / predicted, 0.0)
    recall = np.where(actual > 0, true_positive / actual, 0.0)
    f1 = np.where(
      precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0
    )
  rows = {
    name: {
      "precision": float(precision[i]),
      "recall": float(recall[i]),
      "f1": float(f1[i]),
      "support": int(actual[i]),
    }
    for i, name in enumerate(class_names)
  }
  macro = {
    key: float(np.mean([r[key] for r in rows.values()]))
    for key in ("precision", "recall", "f1")
  }
  return rows, macro


def most_confused(confusion, class_names, count=20):
  """The `count` largest off-diagonal cells: [{"true", "predicted",
  "examples"}], most examples first (ties in class order)."""
  confusion = np.asarray(confusion)
  off_diagonal = confusion.copy()
  np.fill_diagonal(off_diagonal, 0)
  flat = np.argsort(-off_diagonal, axis=None, kind="stable")[:count]
  pairs = []
  for index in flat:
    true, predicted = np.unravel_index(index, confusion.shape)
    if off_diagonal[true, predicted] == 0:
      break
    pairs.append(
      {
        "true": class_names[true],
        "predicted": class_names[predicted],
        "examples": int(off_diagonal[true, predicted]),
      }
    )
  return pairs


def extreme_classes(per_class, count=10):
  """(worst, best) `count` classes by recall (the class's own accuracy),
  as [(name, recall, support)], among the classes with examples; ties in
  label order. No class is in both (an early model scores most classes
  alike)."""
  rows = [
    (row["recall"], index, name, row["support"])
    for index, (name, row) in enumerate(per_class.items())
    if row["support"]
  ]
  worst = sorted(rows)[:count]
  rest = [row for row in rows if row not in worst]
  best = sorted(rest, key=lambda r: (-r[0], r[1]))[:count]
  return (
    [(name, recall, support) for recall, _, name, support in worst],
    [(name, recall, support) for recall, _, name, support in best],
  )


def roc_curve(totals, num_classes, with_confusion=False):
  """(false_positive_rates, true_positive_rates) from the AUC histograms."""
  if num_classes != 1:
    return None
  parts = metrics.StatsLayout(num_classes, with_confusion).parts(totals)
  positive = parts["auc_positive"][::-1]
  negative = parts["auc_negative"][::-1]
  tpr = np.concatenate([[0.0], np.cumsum(positive) / max(positive.sum(), 1)])
  fpr = np.concatenate([[0.0], np.cumsum(negative) / max(negative.sum(), 1)])
  return fpr, tpr
