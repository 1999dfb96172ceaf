"""The training step under every strategy and precision, in fresh processes.

Logical CPU devices and multi-worker clusters must be set up before
TensorFlow initialises, so each case runs in its own interpreter(s).
"""

from conftest import run_probe
from conftest import run_workers
import numpy as np
import pytest

pytestmark = pytest.mark.multiprocess


def test_float16_overflow_on_one_replica_skips_the_step_everywhere(
  cache_dir, tmp_path
):
  got = run_probe("train:mirrored_overflow", cache_dir, tmp_path / "run")
  # The overflowing step is skipped on both replicas and the scale halves...
  assert got["overflow_step"] == {
    "finite": True,
    "unchanged": True,
    "replicas_equal": True,
  }, got
  assert got["scale_after_overflow"] == got["scale_before"] / 2, got
  # ...and the next, clean step does update (the check above can fail).
  assert got["clean_step"] == {
    "finite": True,
    "unchanged": False,
    "replicas_equal": True,
  }, got
  assert got["scale_after_clean"] == 16.0, got


def test_float16_overflow_on_one_worker_finishes_with_identical_weights(
  cache_dir, tmp_path
):
  results = run_workers(
    "train:multi_worker_overflow", cache_dir, tmp_path / "mw", timeout=240
  )
  assert [r["status"] for r in results] == ["completed", "completed"], results
  assert all(r["finite"] for r in results), results
  assert results[0]["digest"] == results[1]["digest"], results
  # The planted overflow halved the scale on both workers (real float16
  # overflows in the clean steps may halve it again, on both alike).
  assert results[0]["scale"] == results[1]["scale"] <= 2.0**14, results


@pytest.mark.parametrize("perturb", [False, True])
def test_worker_digests_are_of_the_weights_each_worker_trained(
  cache_dir, tmp_path, perturb
):
  results = run_workers(
    "train:digest_of_trained_weights",
    cache_dir,
    tmp_path / "mw",
    env_per_worker=[{}, {"PERTURB": "1" if perturb else "0"}],
  )
  assert [r["status"] for r in results] == ["completed", "completed"]
  digests = [r["digest"] for r in results]
  if perturb:  # The negative control: the check sees a planted difference.
    assert digests[0] != digests[1], results
  else:
    assert digests[0] == digests[1], results


def step_differences(a, b, rtol, forward_only=False):
  """What differs between two runs of the steps, beyond `rtol`.

  forward_only: the first step's loss and the evaluation (forward pass and
  loss), not the gradients and the loss after an update.
  """
  found = []
  steps = 1 if forward_only else len(b["losses"])
  if not np.allclose(
    a["losses"][:steps], b["losses"][:steps], rtol=rtol, atol=0
  ):
    found.append(f"training losses {a['losses']} vs {b['losses']}")
  if not forward_only:
    gradients_a, gradients_b = (
      np.asarray(a["gradients"]),
      np.asarray(b["gradients"]),
    )
    relative = np.linalg.norm(gradients_a - gradients_b) / np.linalg.norm(
      gradients_b
    )
    if relative > rtol:
      found.append(f"gradients differ by {relative:.2g} (relative L2)")
  if not np.allclose(a["eval"], b["eval"], rtol=rtol, atol=0):
    found.append(f"eval loss, correct, count {a['eval']} vs {b['eval']}")
  return found


TPU_DTYPES = ["bfloat16", "int32", "int32", "bfloat16", "int32", "float32"]


def test_tpu_path_steps_compile_with_xla_and_match_in_float32(
  cache_dir, tmp_path
):
  got = run_probe(
    "train:xla_steps",
    cache_dir,
    tmp_path / "run",
    PRECISION="float32",
    DROPOUT="0",
  )
  assert got["dtypes"] == TPU_DTYPES, got["dtypes"]
  # Measured here: losses and gradients agree to ~3e-6.
  assert step_differences(got["xla"], got["plain"], rtol=1e-4) == []
  # The controls: a doubled learning rate changes the second step's loss,
  # a shifted output bias every figure.
  doubled = step_differences(got["xla_double_rate"], got["plain"], rtol=1e-4)
  assert len(doubled) == 1 and doubled[0].startswith("training losses"), doubled
  assert len(step_differences(got["xla_shifted_bias"], got["plain"], 1e-4)) == 3


def test_tpu_path_steps_compile_with_xla_and_match_in_bfloat16(
  cache_dir, tmp_path
):
  """Forward pass and loss only: in bfloat16 the gradients that flow back
  through BatchNorm (which cancels most of them) differ by up to ~15%
  between any two op orders, XLA's or the CPU kernels' - the built-in Keras
  layer as much as the fused one; above the first BatchNorm they agree to
  ~0.5%. The float32 test compares the gradients and the loss after an
  update."""
  got = run_probe(
    "train:xla_steps",
    cache_dir,
    tmp_path / "run",
    PRECISION="mixed_bfloat16",
    DROPOUT="0",
  )
  assert got["dtypes"] == TPU_DTYPES, got["dtypes"]
  assert np.all(np.isfinite(got["xla"]["losses"]))
  # Measured here: first loss ~1e-3 apart, evaluation ~2e-5.
  assert (
    step_differences(got["xla"], got["plain"], 1e-2, forward_only=True) == []
  )
  # The control: the output bias shifted by 1 moved the first loss by 4-24%
  # and the evaluation's by 18% in runs here.
  assert step_differences(
    got["xla_shifted_bias"], got["plain"], 1e-2, forward_only=True
  )


def test_tpu_path_steps_with_dropout_compile_with_xla(cache_dir, tmp_path):
  got = run_probe(
    "train:xla_steps",
    cache_dir,
    tmp_path / "run",
    PRECISION="float32",
    DROPOUT="0.5",
  )
  assert np.all(np.isfinite(got["xla"]["losses"])), got["xla"]
  gradients = np.asarray(got["xla"]["gradients"])
  assert np.all(np.isfinite(gradients)) and np.linalg.norm(gradients) > 0
