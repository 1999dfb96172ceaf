"""Exact figures from summed counts, checked against hand computation."""

import numpy as np
import tensorflow as tf

from trainer import metrics


def test_confusion_accuracy_and_loss_by_hand():
  labels = tf.constant([0, 1, 2, 2, 1, 0], tf.int64)
  probs = tf.constant([[.8, .1, .1], [.1, .7, .2], [.2, .2, .6],
                       [.5, .3, .2], [.6, .3, .1], [.3, .3, .4]])
  loss = metrics.loss_per_example(labels, probs, 3)
  stats = metrics.batch_stats(labels, probs, loss, 3, with_confusion=True)
  got = metrics.summarize(stats.numpy(), 3, with_confusion=True)
  # Rows: true class; columns: predicted.
  assert got["confusion_matrix"] == [[1, 0, 1], [1, 1, 0], [1, 0, 1]]
  assert got["count"] == 6
  np.testing.assert_allclose(got["accuracy"], 3 / 6)
  want_loss = -np.mean(np.log([.8, .7, .6, .2, .3, .3]))
  np.testing.assert_allclose(got["loss"], want_loss, rtol=1e-5)


def test_weights_exclude_padding():
  labels = tf.constant([1, 0, 0], tf.int64)
  probs = tf.constant([[.9], [.2], [.99]])
  loss = metrics.loss_per_example(labels, probs, 1)
  stats = metrics.batch_stats(labels, probs, loss, 1,
                              weights=tf.constant([1.0, 1.0, 0.0]))
  got = metrics.summarize(stats.numpy(), 1)
  assert got["count"] == 2 and got["accuracy"] == 1.0
  np.testing.assert_allclose(got["loss"], -np.mean(np.log([.9, .8])), rtol=1e-5)


def test_auc_matches_pairwise_definition():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 400)
  scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 0.999)
  # Scores on bin centres so binning loses nothing; ties count half.
  scores = (np.floor(scores * metrics.AUC_BINS) + 0.5) / metrics.AUC_BINS
  stats = metrics.batch_stats(tf.constant(labels), tf.constant(scores[:, None],
                                                              tf.float32),
                              tf.zeros(400), 1)
  got = metrics.summarize(stats.numpy(), 1)["auc"]
  pos, neg = scores[labels == 1], scores[labels == 0]
  want = np.mean((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None]))
  np.testing.assert_allclose(got, want, rtol=1e-6)
