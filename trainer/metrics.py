"""Exact, strategy-agnostic metrics from summed counts.

Each replica turns its batch into a flat vector of sums (loss, correct,
count, score histograms for AUC, optionally a confusion matrix); vectors are
summed across replicas and steps, and `summarize` turns the totals into
figures. Sums of weighted counts make evaluation exact: padding examples have
weight 0 and so count nowhere.
"""

import numpy as np
import tensorflow as tf

AUC_BINS = 1000


def loss_per_example(labels, probabilities, num_classes):
  """Cross-entropy per example, float32 (binary when num_classes == 1)."""
  probabilities = tf.cast(probabilities, tf.float32)
  epsilon = 1e-7  # As Keras: keeps log() finite at saturated outputs.
  if num_classes == 1:
    p = tf.clip_by_value(probabilities[:, 0], epsilon, 1 - epsilon)
    y = tf.cast(labels, tf.float32)
    return -(y * tf.math.log(p) + (1 - y) * tf.math.log(1 - p))
  p = tf.clip_by_value(probabilities, epsilon, 1.0)
  return -tf.math.log(tf.gather(p, labels, axis=1, batch_dims=1))


def predicted_classes(probabilities, num_classes):
  if num_classes == 1:
    return tf.cast(probabilities[:, 0] >= 0.5, tf.int64)
  return tf.argmax(probabilities, axis=1)


def stats_size(num_classes, with_confusion):
  k = max(2, num_classes)
  size = 3
  if num_classes == 1:
    size += 2 * AUC_BINS
  if with_confusion:
    size += k * k
  return size


def batch_stats(labels, probabilities, per_example_loss, num_classes,
                weights=None, with_confusion=False):
  """The summable statistics of one batch, as a flat float32 vector."""
  if weights is None:
    weights = tf.ones_like(per_example_loss)
  labels = tf.cast(labels, tf.int64)
  predictions = predicted_classes(probabilities, num_classes)
  correct = tf.cast(tf.equal(predictions, labels), tf.float32)
  parts = [tf.stack([tf.reduce_sum(per_example_loss * weights),
                     tf.reduce_sum(correct * weights),
                     tf.reduce_sum(weights)])]
  if num_classes == 1:
    score = tf.cast(probabilities[:, 0], tf.float32)
    bins = tf.clip_by_value(tf.cast(score * AUC_BINS, tf.int32), 0, AUC_BINS - 1)
    positive = tf.cast(labels, tf.float32) * weights
    negative = (1.0 - tf.cast(labels, tf.float32)) * weights
    parts.append(tf.math.unsorted_segment_sum(positive, bins, AUC_BINS))
    parts.append(tf.math.unsorted_segment_sum(negative, bins, AUC_BINS))
  if with_confusion:
    k = max(2, num_classes)
    confusion = tf.math.confusion_matrix(labels, predictions, num_classes=k,
                                         weights=weights, dtype=tf.float32)
    parts.append(tf.reshape(confusion, [-1]))
  return tf.concat(parts, axis=0)


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
  return float(np.sum(positive * (negatives_below + 0.5 * negative)) /
               (total_pos * total_neg))


def summarize(totals, num_classes, with_confusion=False):
  """Figures from summed statistics: loss, accuracy, count, auc, confusion."""
  totals = np.asarray(totals, np.float64)
  loss_sum, correct, count = totals[:3]
  result = {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1),
            "count": int(round(count))}
  offset = 3
  if num_classes == 1:
    positive = totals[offset:offset + AUC_BINS]
    negative = totals[offset + AUC_BINS:offset + 2 * AUC_BINS]
    result["auc"] = auc_from_histograms(positive, negative)
    offset += 2 * AUC_BINS
  if with_confusion:
    k = max(2, num_classes)
    result["confusion_matrix"] = np.rint(
        totals[offset:offset + k * k].reshape(k, k)).astype(int).tolist()
  return result
