"""Exact figures from summed counts, checked against hand computation."""

import numpy as np
import tensorflow as tf

from trainer import metrics


def test_confusion_accuracy_and_loss_by_hand():
  labels = tf.constant([0, 1, 2, 2, 1, 0], tf.int64)
  probs = tf.constant(
    [
      [0.8, 0.1, 0.1],
      [0.1, 0.7, 0.2],
      [0.2, 0.2, 0.6],
      [0.5, 0.3, 0.2],
      [0.6, 0.3, 0.1],
      [0.3, 0.3, 0.4],
    ]
  )
  loss = metrics.loss_per_example(labels, probs, 3)
  stats = metrics.batch_stats(labels, probs, loss, 3, with_confusion=True)
  got = metrics.summarize(stats.numpy(), 3, with_confusion=True)
  # Rows: true class; columns: predicted.
  assert got["confusion_matrix"] == [[1, 0, 1], [1, 1, 0], [1, 0, 1]]
  assert got["count"] == 6
  np.testing.assert_allclose(got["accuracy"], 3 / 6)
  want_loss = -np.mean(np.log([0.8, 0.7, 0.6, 0.2, 0.3, 0.3]))
  np.testing.assert_allclose(got["loss"], want_loss, rtol=1e-5)


def test_weights_exclude_padding():
  labels = tf.constant([1, 0, 0], tf.int64)
  probs = tf.constant([[0.9], [0.2], [0.99]])
  loss = metrics.loss_per_example(labels, probs, 1)
  stats = metrics.batch_stats(
    labels, probs, loss, 1, weights=tf.constant([1.0, 1.0, 0.0])
  )
  got = metrics.summarize(stats.numpy(), 1)
  assert got["count"] == 2 and got["accuracy"] == 1.0
  np.testing.assert_allclose(
    got["loss"], -np.mean(np.log([0.9, 0.8])), rtol=1e-5
  )


def test_auc_matches_pairwise_definition():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 400)
  scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 0.999)
  # Scores on bin centres so binning loses nothing; ties count half.
  scores = (np.floor(scores * metrics.AUC_BINS) + 0.5) / metrics.AUC_BINS
  stats = metrics.batch_stats(
    tf.constant(labels),
    tf.constant(scores[:, None], tf.float32),
    tf.zeros(400),
    1,
  )
  got = metrics.summarize(stats.numpy(), 1)["auc"]
  pos, neg = scores[labels == 1], scores[labels == 0]
  want = np.mean((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None]))
  np.testing.assert_allclose(got, want, rtol=1e-6)


def _top5_by_numpy(labels, probs, weights):
  # A label is a hit when fewer than 5 other classes score at least as high.
  label_scores = probs[np.arange(len(labels)), labels]
  others = (probs >= label_scores[:, None]).sum(axis=1) - 1
  return float(np.sum((others < 5) * weights))


def test_top5_is_an_exact_weighted_count_with_ties():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 12, 300)
  # Scores on a coarse grid: many ties straddle the 5th place.
  probs = (rng.integers(0, 6, (300, 12)) / 8.0).astype(np.float32)
  weights = (rng.random(300) < 0.8).astype(np.float32)  # 0 = padding
  stats = metrics.batch_stats(
    tf.constant(labels),
    tf.constant(probs),
    tf.zeros(300),
    12,
    weights=tf.constant(weights),
    with_confusion=True,
  )
  parts = metrics.StatsLayout(12, with_confusion=True).parts(stats.numpy())
  want = _top5_by_numpy(labels, probs, weights)
  assert parts["top5"][0] == want
  got = metrics.summarize(stats.numpy(), 12, with_confusion=True)
  np.testing.assert_allclose(got["top5_accuracy"], want / weights.sum())
  assert got["accuracy"] <= got["top5_accuracy"] < 1.0
  # Negative control: breaking ties by class order (a plain top-5 of
  # argsort) counts differently on this tie-heavy batch, and the check sees it.
  by_order = np.argsort(-probs, axis=1, kind="stable")[:, :5]
  order_count = float(np.sum((by_order == labels[:, None]).any(1) * weights))
  assert order_count != parts["top5"][0]
  # Nor does tf.math.in_top_k's rule (ties in the label's favour).
  in_top_k = tf.math.in_top_k(
    tf.constant(labels, tf.int32), tf.constant(probs), 5
  )
  assert float(np.sum(in_top_k.numpy() * weights)) != parts["top5"][0]


def test_top5_of_a_collapsed_model_is_zero():
  # Equal scores everywhere: no class is among the 5 highest more than any
  # other, so none counts (in_top_k would count every one).
  stats = metrics.batch_stats(
    tf.constant([0, 3, 7]), tf.fill([3, 12], 1 / 12), tf.zeros(3), 12
  )
  assert metrics.summarize(stats.numpy(), 12)["top5_accuracy"] == 0.0
  nan_row = tf.constant([[np.nan] + [0.1] * 11])
  stats = metrics.batch_stats(tf.constant([1]), nan_row, tf.zeros(1), 12)
  assert metrics.summarize(stats.numpy(), 12)["top5_accuracy"] == 0.0


def test_top5_only_at_five_classes_or_more():
  for num_classes, has_top5 in ((1, False), (2, False), (4, False), (5, True)):
    layout = metrics.StatsLayout(num_classes)
    assert ("top5" in layout.slices) == has_top5
    width = max(1, num_classes)
    stats = metrics.batch_stats(
      tf.constant([0, 0]),
      tf.fill([2, width], 1.0 / width),
      tf.zeros(2),
      num_classes,
    )
    assert stats.shape[0] == layout.size
    assert (
      "top5_accuracy" in metrics.summarize(stats.numpy(), num_classes)
    ) == has_top5
  # With exactly 5 classes every label is in the top 5.
  stats = metrics.batch_stats(
    tf.constant([4, 2]),
    tf.constant([[0.9, 0.04, 0.03, 0.02, 0.01]] * 2),
    tf.zeros(2),
    5,
  )
  assert metrics.summarize(stats.numpy(), 5)["top5_accuracy"] == 1.0


def test_the_best_classes_are_not_the_worst_ones_again():
  """When most classes score alike (an early model: 2 of 30 right), the
  best list holds only classes the worst list does not."""
  from trainer import evaluation

  per_class = {
    str(i): {"recall": 1.0 if i in (12, 25) else 0.0, "support": 1}
    for i in range(30)
  }
  worst, best = evaluation.extreme_classes(per_class)
  assert [name for name, _, _ in worst] == [str(i) for i in range(10)]
  assert [name for name, _, _ in best][:2] == ["12", "25"]
  assert not {n for n, _, _ in worst} & {n for n, _, _ in best}
  few = {str(i): {"recall": i / 4, "support": 1} for i in range(5)}
  worst, best = evaluation.extreme_classes(few)
  assert len(worst) == 5 and best == []
