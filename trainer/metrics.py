"""Exact, strategy-agnostic metrics from summed counts.

Each replica turns its batch into a flat vector of sums (loss, correct,
count, top-5 hits at 5+ classes, score histograms for AUC, optionally a
confusion matrix); vectors are
summed across replicas and steps, and `summarize` turns the totals into
figures. Sums of weighted counts make evaluation exact: padding examples have
weight 0 and so count nowhere.
"""

import numpy as np
import tensorflow as tf

AUC_BINS = 1000
# Top-k accuracy is reported at num_classes >= TOP_K (AlexNet's headline
# figure is top-5 error); with fewer classes it is always 1.
TOP_K = 5


def loss_per_example(labels, probabilities, num_classes):
  """Cross-entropy per example, float32 (binary when num_classes == 1).

  Args:
    labels: integer labels [b], or soft targets (any float dtype; label
      smoothing, mixup, cutmix): [b] probabilities of class 1 when
      num_classes == 1, else [b, num_classes] (augment.soft_targets).
    probabilities: the model's outputs [b, max(1, num_classes)].
    num_classes: as --num_classes.
  """
  labels = tf.convert_to_tensor(labels)
  probabilities = tf.cast(probabilities, tf.float32)
  epsilon = 1e-7  # As Keras: keeps log() finite at saturated outputs.
  if num_classes == 1:
    p = tf.clip_by_value(probabilities[:, 0], epsilon, 1 - epsilon)
    y = tf.cast(labels, tf.float32)
    return -(y * tf.math.log(p) + (1 - y) * tf.math.log(1 - p))
  p = tf.clip_by_value(probabilities, epsilon, 1.0)
  if labels.dtype.is_floating:
    return -tf.reduce_sum(tf.cast(labels, tf.float32) * tf.math.log(p), axis=1)
  return -tf.math.log(tf.gather(p, labels, axis=1, batch_dims=1))


def predicted_classes(probabilities, num_classes):
  if num_classes == 1:
    return tf.cast(probabilities[:, 0] >= 0.5, tf.int64)
  return tf.argmax(probabilities, axis=1)


class StatsLayout:
  """Where each summable statistic sits in the flat float32 vector.

  The parts, in order: "sums" (loss sum, correct, count), for binary models
  "auc_positive" and "auc_negative" (score histograms), at 5+ classes
  "top5" (examples whose label is among the 5 highest scores), optionally
  "confusion" (k x k, row-major) and "skipped" (records dropped by
  --skip_corrupt). Only this class knows the offsets.
  """

  def __init__(self, num_classes, with_confusion=False, with_skipped=False):
    self.num_classes = num_classes
    self.with_confusion = with_confusion
    self.with_skipped = with_skipped
    k = max(2, num_classes)
    sizes = [("sums", 3)]
    if num_classes == 1:
      sizes += [("auc_positive", AUC_BINS), ("auc_negative", AUC_BINS)]
    if num_classes >= TOP_K:
      sizes.append(("top5", 1))
    if with_confusion:
      sizes.append(("confusion", k * k))
    if with_skipped:
      sizes.append(("skipped", 1))
    self.slices, offset = {}, 0
    for name, size in sizes:
      self.slices[name] = slice(offset, offset + size)
      offset += size
    self.size = offset

  def parts(self, totals):
    """{part name: float64 array} of a (summed) statistics vector."""
    totals = np.asarray(totals, np.float64)
    return {name: totals[where] for name, where in self.slices.items()}


def batch_stats(
  labels,
  probabilities,
  per_example_loss,
  num_classes,
  weights=None,
  with_confusion=False,
  skipped=None,
):
  """The summable statistics of one batch, as a flat float32 vector laid out
  by StatsLayout(num_classes, with_confusion, skipped is not None)."""
  if weights is None:
    weights = tf.ones_like(per_example_loss)
  labels = tf.cast(labels, tf.int64)
  predictions = predicted_classes(probabilities, num_classes)
  correct = tf.cast(tf.equal(predictions, labels), tf.float32)
  parts = [
    tf.stack(
      [
        tf.reduce_sum(per_example_loss * weights),
        tf.reduce_sum(correct * weights),
        tf.reduce_sum(weights),
      ]
    )
  ]
  if num_classes == 1:
    score = tf.cast(probabilities[:, 0], tf.float32)
    bins = tf.clip_by_value(
      tf.cast(score * AUC_BINS, tf.int32), 0, AUC_BINS - 1
    )
    positive = tf.cast(labels, tf.float32) * weights
    negative = (1.0 - tf.cast(labels, tf.float32)) * weights
    parts.append(tf.math.unsorted_segment_sum(positive, bins, AUC_BINS))
    parts.append(tf.math.unsorted_segment_sum(negative, bins, AUC_BINS))
  if num_classes >= TOP_K:
    parts.append([tf.reduce_sum(top_k_hits(labels, probabilities) * weights)])
  if with_confusion:
    k = max(2, num_classes)
    confusion = tf.math.confusion_matrix(
      labels, predictions, num_classes=k, weights=weights, dtype=tf.float32
    )
    parts.append(tf.reshape(confusion, [-1]))
  if skipped is not None:
    parts.append([tf.cast(tf.reduce_sum(skipped), tf.float32)])
  return tf.concat(parts, axis=0)


def top_k_hits(labels, probabilities, k=TOP_K):
  """1.0 where the label's score is among the k highest, else 0.0 (float32).

  Ties count against the label: it is a hit when fewer than k other classes
  score at least as high. So a collapsed model whose outputs are all equal
  scores 0 (tf.math.in_top_k's rule, ties in the label's favour, would give
  it 1.0 and let --best_metric keep it), and a tie at the k-th place never
  depends on class order. A row with a non-finite score is a miss.
  """
  probabilities = tf.cast(probabilities, tf.float32)
  label_scores = tf.gather(
    probabilities, tf.cast(labels, tf.int32), axis=1, batch_dims=1
  )
  at_least_as_high = (
    tf.reduce_sum(
      tf.cast(probabilities >= label_scores[:, None], tf.int32), axis=1
    )
    - 1
  )
  finite = tf.reduce_all(tf.math.is_finite(probabilities), axis=1)
  return tf.cast(tf.logical_and(at_least_as_high < k, finite), tf.float32)


def auc_from_histograms(positive, negative):
  """ROC AUC from per-bin counts; ties within a bin count as half."""
  positive = np.asarray(positive, np.float64)[::-1]
  negative = np.asarray(negative, np.float64)[::-1]
  total_pos, total_neg = positive.sum(), negative.sum()
  if total_pos == 0 or total_neg == 0:
    return float("nan")
  # Index 0 is now the highest-score bin: negatives below bin i are those
  # in later bins.
  negatives_below = total_neg - np.cumsum(negative)
  return float(
    np.sum(positive * (negatives_below + 0.5 * negative))
    / (total_pos * total_neg)
  )


def summarize(totals, num_classes, with_confusion=False, with_skipped=False):
  """Figures from summed statistics: loss, accuracy, count, and auc,
  top5_accuracy, confusion_matrix, skipped when the layout has them."""
  parts = StatsLayout(num_classes, with_confusion, with_skipped).parts(totals)
  loss_sum, correct, count = parts["sums"]
  result = {
    "loss": loss_sum / max(count, 1),
    "accuracy": correct / max(count, 1),
    "count": int(round(count)),
  }
  if "auc_positive" in parts:
    result["auc"] = auc_from_histograms(
      parts["auc_positive"], parts["auc_negative"]
    )
  if "top5" in parts:
    result["top5_accuracy"] = parts["top5"][0] / max(count, 1)
  if "confusion" in parts:
    k = max(2, num_classes)
    result["confusion_matrix"] = (
      np.rint(parts["confusion"].reshape(k, k)).astype(int).tolist()
    )
  if "skipped" in parts:
    result["skipped"] = int(round(parts["skipped"][0]))
  return result
