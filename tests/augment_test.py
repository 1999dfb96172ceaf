"""Label smoothing, mixup, cutmix, RandAugment and PCA lighting."""

import io
import json

from conftest import read_jsonl
import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import augment
from trainer import data
from trainer import metrics

# ----------------------------------------------------------------------------
# Soft targets and the loss.


def _keras_loss(num_classes, smoothing, labels, probabilities):
  if num_classes == 1:
    loss = keras.losses.BinaryCrossentropy(
      label_smoothing=smoothing, reduction=None
    )
    return loss(np.asarray(labels, np.float32)[:, None], probabilities)
  loss = keras.losses.CategoricalCrossentropy(
    label_smoothing=smoothing, reduction=None
  )
  return loss(tf.one_hot(labels, num_classes), probabilities)


@pytest.mark.parametrize("num_classes", [1, 5])
def test_label_smoothing_loss_equals_keras(num_classes):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, max(2, num_classes), 64)
  if num_classes == 1:
    probabilities = rng.uniform(0.01, 0.99, (64, 1)).astype(np.float32)
  else:
    logits = rng.normal(0, 2, (64, num_classes))
    probabilities = (
      np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ).astype(np.float32)
  ours = metrics.loss_per_example(
    augment.soft_targets(labels, num_classes, 0.1), probabilities, num_classes
  )
  np.testing.assert_allclose(
    ours, _keras_loss(num_classes, 0.1, labels, probabilities), rtol=1e-5
  )
  # Unsmoothed soft targets are the integer-label loss...
  np.testing.assert_allclose(
    metrics.loss_per_example(
      augment.soft_targets(labels, num_classes), probabilities, num_classes
    ),
    metrics.loss_per_example(labels, probabilities, num_classes),
    rtol=1e-6,
  )
  # ... and the control: they are not Keras' smoothed loss.
  assert not np.allclose(
    metrics.loss_per_example(
      augment.soft_targets(labels, num_classes), probabilities, num_classes
    ),
    _keras_loss(num_classes, 0.1, labels, probabilities),
    rtol=1e-3,
  )


# ----------------------------------------------------------------------------
# Mixup and cutmix.

BATCH, SIDE, CLASSES = 8, 16, 8


def _constant_batch():
  """Image i is filled with 20 * (i + 1): each pixel names its source."""
  values = 20.0 * (np.arange(BATCH) + 1)
  images = np.broadcast_to(
    values[:, None, None, None], (BATCH, SIDE, SIDE, 3)
  ).astype(np.uint8)
  labels = np.arange(BATCH)
  return tf.constant(images), tf.constant(labels, tf.int64)


def _mix(mixup_alpha, cutmix_alpha, step=0, replica=0, seed=42):
  images, labels = _constant_batch()
  targets = augment.soft_targets(labels, CLASSES)
  mixed, mixed_targets, majority, keep = augment.mix_batch(
    images,
    targets,
    labels,
    mixup_alpha,
    cutmix_alpha,
    augment.mixing_seed(seed, step, replica),
  )
  return (mixed.numpy(), mixed_targets.numpy(), majority.numpy(), float(keep))


def test_cutmix_targets_weigh_the_pasted_area():
  areas = []
  for step in range(6):
    images, targets, majority, keep = _mix(0.0, 1.0, step=step)
    for i in range(BATCH):
      own = images[i] == 20.0 * (i + 1)
      others = np.unique(images[i][~own])
      assert len(others) <= 1  # one partner per image
      own_share = own.mean()
      assert own_share == pytest.approx(keep, abs=1e-6)
      want = np.zeros(CLASSES)
      want[i] += own_share
      if len(others):
        partner = int(round(others[0] / 20.0)) - 1
        want[partner] += 1 - own_share
      np.testing.assert_allclose(targets[i], want, atol=1e-6)
      assert majority[i] == int(np.argmax(want))
    areas.append(keep)
  assert len(set(areas)) > 1 and min(areas) < 1.0, areas  # boxes vary, paste


def test_mixup_blends_images_and_targets_by_the_same_weight():
  images, targets, majority, keep = _mix(0.4, 0.0)
  assert 0.0 < keep < 1.0
  for i in range(BATCH):
    assert np.ptp(images[i]) < 1e-4  # a blend of two constant images
    partner = int(np.argmax(targets[i] * (np.arange(CLASSES) != i)))
    if targets[i][i] < 1 - 1e-6:
      expected = keep * 20.0 * (i + 1) + (1 - keep) * 20.0 * (partner + 1)
      assert images[i].flat[0] == pytest.approx(expected, rel=1e-5)
      assert targets[i][i] == pytest.approx(keep, abs=1e-6)
      assert targets[i][partner] == pytest.approx(1 - keep, abs=1e-6)
    assert majority[i] == (i if keep >= 0.5 else partner)


def test_mixing_is_fixed_by_seed_step_and_replica():
  first = _mix(0.4, 1.0, step=3, replica=1)
  again = _mix(0.4, 1.0, step=3, replica=1)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  for other in (
    _mix(0.4, 1.0, step=4, replica=1),
    _mix(0.4, 1.0, step=3, replica=0),
    _mix(0.4, 1.0, step=3, replica=1, seed=7),
  ):
    assert not np.array_equal(first[0], other[0])


def test_both_alphas_switch_between_mixup_and_cutmix():
  kinds = set()
  for step in range(12):
    images = _mix(0.4, 1.0, step=step)[0]
    whole = np.all(np.isin(images, 20.0 * (np.arange(BATCH) + 1)))
    kinds.add("cutmix" if whole else "mixup")
  assert kinds == {"cutmix", "mixup"}


def _assert_consistent_mix(images, targets, keep):
  """Each image's mean pixel and its target weigh its own image and one
  partner by the same share `keep` (mixup or cutmix alike)."""
  for i in range(BATCH):
    others = targets[i] * (np.arange(CLASSES) != i)
    partner = int(np.argmax(others))
    assert targets[i][i] == pytest.approx(keep, abs=1e-5)
    assert others[partner] == pytest.approx(1 - keep, abs=1e-5)
    assert partner != i
    want = keep * 20.0 * (i + 1) + (1 - keep) * 20.0 * (partner + 1)
    assert images[i].mean() == pytest.approx(want, rel=1e-4)


def test_mixing_compiles_with_xla():
  """What TPUs compile. XLA's stateless generators draw other numbers than
  the CPU kernels from the same seed, so the compiled mixes are checked for
  consistency and repeatability, not against the CPU's."""
  images, labels = _constant_batch()
  targets = augment.soft_targets(labels, CLASSES)

  @tf.function(jit_compile=True)
  def mix(step):
    return augment.mix_batch(
      images, targets, labels, 0.4, 1.0, augment.mixing_seed(42, step, 0)
    )

  draws = []
  for step in range(4):
    step = tf.constant(step, tf.int64)  # one compilation for every step
    mixed, mixed_targets, _, keep = (t.numpy() for t in mix(step))
    _assert_consistent_mix(mixed, mixed_targets, float(keep))
    np.testing.assert_array_equal(mixed, mix(step)[0].numpy())
    draws.append(float(keep))
  assert len(set(draws)) == 4, draws
  # The control: the checker sees a target that does not match the pixels.
  wrong = mixed_targets.copy()
  wrong[0] = np.roll(wrong[0], 1)
  with pytest.raises(AssertionError):
    _assert_consistent_mix(mixed, wrong, float(keep))


# ----------------------------------------------------------------------------
# Per-image augmentations on the host.


def _photo(seed=0, side=48):
  """A smooth colour image with texture, like the synthetic set."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:side, 0:side] / side
  image = np.stack(
    [120 + 80 * np.sin(6 * xx + 3 * c) * np.cos(4 * yy - c) for c in range(3)],
    -1,
  ) + rng.normal(0, 8, (side, side, 3))
  return np.clip(image, 0, 255).astype(np.uint8)


def _seed(a, b=0):
  return tf.constant([a, b], tf.int64)


@pytest.mark.parametrize("name", ["randaugment", "pca_lighting"])
def test_per_image_augmentation_is_uint8_seeded_and_changes_the_image(name):
  def apply(image, seed):
    if name == "randaugment":
      return augment.randaugment(image, 9, seed)
    return augment.pca_lighting(image, 0.1, seed)

  image = tf.constant(_photo())
  outputs = [apply(image, _seed(s)).numpy() for s in range(8)]
  assert all(o.dtype == np.uint8 and o.shape == image.shape for o in outputs)
  np.testing.assert_array_equal(outputs[0], apply(image, _seed(0)).numpy())
  changed = [not np.array_equal(o, image.numpy()) for o in outputs]
  # RandAugment may draw identity twice, or ops that leave this image; the
  # paper's lighting may shift every channel by under half a level.
  assert sum(changed) >= 6, changed
  assert len({o.tobytes() for o in outputs}) >= 6


def test_pca_lighting_shifts_along_imagenet_principal_components():
  image = np.full((8, 8, 3), 128, np.uint8)
  shifted = augment.pca_lighting(tf.constant(image), 0.1, _seed(3)).numpy()
  alpha = tf.random.stateless_normal([3], seed=_seed(3), stddev=0.1).numpy()
  want = 128 + 255 * np.asarray(augment.PCA_EIGENVECTORS) @ (
    alpha * np.asarray(augment.PCA_EIGENVALUES)
  )
  np.testing.assert_array_equal(shifted[0, 0], np.round(want))
  assert np.all(shifted == shifted[0, 0])  # one colour shift per image


def test_equalize_matches_pil():
  from PIL import Image
  from PIL import ImageOps

  image = (_photo(1) * 0.5 + 40).astype(np.uint8)  # a narrow histogram
  ours = dict(augment.RANDAUGMENT_OPS)["equalize"](
    tf.constant(image, tf.float32), 0.9, 1.0
  ).numpy()
  want = np.asarray(ImageOps.equalize(Image.fromarray(image)))
  np.testing.assert_array_equal(ours, want)
  assert not np.array_equal(want, image)  # the control: it does change


def _jpeg(image):
  from PIL import Image

  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="JPEG", quality=90)
  return tf.constant(buffer.getvalue())


def test_training_decode_with_randaugment_and_lighting_is_seeded():
  encoded = _jpeg(_photo(2, side=64))

  def decode(augment_name, seed, lighting=0.0):
    return data.decode_for_training(
      encoded,
      32,
      augment_name,
      _seed(seed),
      randaugment_magnitude=9,
      pca_lighting=lighting,
    ).numpy()

  crop = decode("random_resized_crop", 5)
  randaugmented = decode("randaugment", 5)
  assert randaugmented.dtype == np.uint8 and randaugmented.shape == (32, 32, 3)
  np.testing.assert_array_equal(randaugmented, decode("randaugment", 5))
  assert not np.array_equal(randaugmented, crop)
  assert not np.array_equal(randaugmented, decode("randaugment", 6))
  # A strong lighting (std 1) for a shift this seed cannot round away.
  lit = decode("random_resized_crop", 5, lighting=1.0)
  np.testing.assert_array_equal(lit, decode("random_resized_crop", 5, 1.0))
  assert not np.array_equal(lit, crop)
  # Lighting shifts colours and moves no pixel: crop and flip are the same.
  shift = lit.astype(int) - crop.astype(int)
  unclipped = (lit > 0) & (lit < 255)
  assert np.ptp(shift[..., 0][unclipped[..., 0]]) <= 1


# ----------------------------------------------------------------------------
# End to end.

ALL_ON = [
  "--label_smoothing=0.1",
  "--mixup_alpha=0.2",
  "--cutmix_alpha=1.0",
  "--augment=randaugment",
  "--randaugment_magnitude=5",
  "--pca_lighting=0.1",
]


@pytest.mark.multiprocess
def test_mirrored_run_with_every_augmentation_trains_and_resumes_after_kill_9(
  run_cli, tmp_path, cache_dir
):
  """Mirrored x2 with every option on. Mixup/cutmix draw from (seed, global
  step, replica) and the per-image augmentations from the image's position:
  a run killed mid-epoch and resumed ends bit for bit where an uninterrupted
  one does (--deterministic)."""
  from resilience_test import _final_state
  from resilience_test import kill_9_after_checkpoint

  common = [
    "--config=tiny",
    "--cpu_devices=2",
    "--strategy=mirrored",
    "--num_classes=2",
    "--deterministic",
    "--epochs=2",
    "--checkpoint_every_steps=4",
    "--steps_per_call=2",
    "--precision=float32",
    "--export=false",
    *ALL_ON,
  ]
  run_cli("trainer.task", *common, f"--model_dir={tmp_path / 'a'}", check=True)
  config = json.loads((tmp_path / "a" / "config.json").read_text())
  assert {
    k: config[k]
    for k in (
      "label_smoothing",
      "mixup_alpha",
      "cutmix_alpha",
      "augment",
      "randaugment_magnitude",
      "pca_lighting",
      "strategy",
      "cpu_devices",
    )
  } == {
    "label_smoothing": 0.1,
    "mixup_alpha": 0.2,
    "cutmix_alpha": 1.0,
    "augment": "randaugment",
    "randaugment_magnitude": 5,
    "pca_lighting": 0.1,
    "strategy": "mirrored",
    "cpu_devices": 2,
  }
  rows = read_jsonl(tmp_path / "a" / "metrics.jsonl")
  assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
  assert rows[-1]["val_accuracy"] >= 0.8, rows  # learns through it all

  interrupted_dir = tmp_path / "b"
  # Mid-epoch 2 (16 steps per epoch): step 20 is saved, then the kill lands.
  kill_9_after_checkpoint(common, interrupted_dir, 20, cache_dir)
  resumed = run_cli(
    "trainer.task", *common, f"--model_dir={interrupted_dir}", check=True
  )
  assert "Resumed from" in resumed.stdout
  a, b = _final_state(tmp_path / "a"), _final_state(interrupted_dir)
  assert int(a["step/.ATTRIBUTES/VARIABLE_VALUE"]) == 32

  # best_monitor holds epoch 2's training loss, which a resumed run averages
  # over the steps after the resume only; every weight and slot must match.
  def differing(x, y):
    return sorted(
      k
      for k in x
      if not np.array_equal(x[k], y[k]) and not k.startswith("best_monitor")
    )

  assert a.keys() == b.keys() and not differing(a, b), differing(a, b)
  # The control: one planted ulp in one weight is caught.
  name = next(k for k in sorted(b) if "model" in k and b[k].dtype == np.float32)
  planted = dict(b, **{name: np.nextafter(b[name], np.inf)})
  assert differing(a, planted) == [name]


@pytest.mark.multiprocess
def test_flags_are_in_helpshort_and_bad_values_are_one_line(run_cli):
  text = run_cli("trainer.task", "--helpshort", timeout=120)
  text = text.stdout + text.stderr
  for flag in (
    "--label_smoothing",
    "--mixup_alpha",
    "--cutmix_alpha",
    "--pca_lighting",
    "--randaugment_magnitude",
    "randaugment",
  ):
    assert flag in text
  result = run_cli(
    "trainer.task", "--config=tiny", "--label_smoothing=1", timeout=120
  )
  assert result.returncode != 0 and "Traceback" not in result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith("Error:")]
  assert errors == ["Error: --label_smoothing must be in [0, 1), got 1.0"]


def test_paper_config_uses_pca_lighting_and_demo_defaults_are_off():
  import configs

  assert configs.get_config("imagenet_paper").pca_lighting == 0.1
  for name in ("demo", "cats_vs_dogs"):
    config = configs.get_config(name)
    assert (
      config.label_smoothing,
      config.mixup_alpha,
      config.cutmix_alpha,
      config.pca_lighting,
    ) == (0, 0, 0, 0)
    assert config.augment != "randaugment"
