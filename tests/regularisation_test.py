"""Gradient clipping (--clip_norm) and weight averaging (--ema_decay) under
one device, two mirrored replicas, two workers and a kill -9 resume."""

import json

from conftest import run_probe
from conftest import run_workers
import numpy as np
import pytest
from resilience_test import _final_state
from resilience_test import kill_9_after_checkpoint

pytestmark = pytest.mark.multiprocess

TINY = ["--config=tiny"]


def check_ema(got, replicas):
  """Checks what tests/probes/regularisation.py's check_averages reports."""
  assert got["ema_replicas"] == replicas, got
  assert got["ema_error"] < 1e-6, got
  # Controls: another decay, or no averaging at all, is seen.
  assert got["ema_error_other_decay"] > 1e-3 and got["ema_error_raw"] > 1e-3, (
    got
  )
  assert got["ema_replicas_equal"], got
  if replicas > 1:
    assert not got["ema_replicas_equal_planted"], got


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_clip_norm_and_ema_under_two_mirrored_replicas(
  cache_dir, tmp_path, precision
):
  """Both options on, loss-scaled or not: the clipped update, then the
  average after four steps, on both replicas."""
  got = run_probe(
    "regularisation:clip", cache_dir, tmp_path / "run", PRECISION=precision
  )
  assert got["different_data"], got
  # Clipping is active for the sum and for each replica's part.
  assert min(got["norms"]) > 0.05 * 2, got
  tolerance = 1e-4 if precision == "float32" else 1e-2
  assert got["error"] < tolerance, got
  # The controls: clipping each replica's gradient before the sum, or not
  # clipping at all, is a different update (and float16 clipping of the
  # still-scaled gradient would be 256 times smaller).
  assert got["error_if_per_replica"] > 0.05, got
  assert got["error_if_unclipped"] > 0.5, got
  assert got["replicas_equal"], got
  if precision == "mixed_float16":
    assert got["scale"] == 256.0, got
  check_ema(got, replicas=2)


def test_ema_follows_numpy_on_one_device(cache_dir, tmp_path):
  check_ema(
    run_probe("regularisation:ema_steps", cache_dir, tmp_path / "run"),
    replicas=1,
  )


def test_validation_best_and_export_use_the_averaged_weights(
  cache_dir, tmp_path
):
  got = run_probe("regularisation:ema_outputs", cache_dir, tmp_path / "run")
  assert got["status"] == "completed" and got["shapes_match"], got
  assert got["export_is_average"] and not got["export_is_raw"], got
  assert got["best_is_average"] and not got["best_is_raw"], got
  # The epoch's val_loss is the averaged weights' (the raw ones score
  # otherwise), and evaluating swaps the raw weights back bit for bit.
  assert got["evaluated"] == pytest.approx(got["recorded"], rel=1e-6), got
  assert got["raw_evaluated"] != pytest.approx(got["recorded"], rel=1e-3), got
  assert got["raw_kept"], got


def test_two_workers_hold_the_same_average(cache_dir, tmp_path):
  results = run_workers(
    "regularisation:ema_workers", cache_dir, tmp_path / "mw", timeout=240
  )
  assert [r["status"] for r in results] == ["completed", "completed"], results
  assert results[0]["weights"] == results[1]["weights"], results
  assert results[0]["average"] == results[1]["average"], results
  assert results[0]["planted"] != results[1]["planted"], results


def test_kill_9_resume_continues_the_same_average(tmp_path, cache_dir, run_cli):
  common = [
    *TINY,
    "--deterministic",
    "--epochs=2",
    "--checkpoint_every_steps=4",
    "--steps_per_call=2",
    "--precision=float32",
    "--export=false",
    "--ema_decay=0.9",
    "--clip_norm=1.0",
  ]
  run_cli("trainer.task", *common, f"--model_dir={tmp_path / 'a'}", check=True)
  interrupted_dir = tmp_path / "b"
  # Mid-epoch 1 (16 steps per epoch): step 12 is saved, then the kill lands.
  kill_9_after_checkpoint(common, interrupted_dir, 12, cache_dir)
  assert (
    json.loads((interrupted_dir / "status.json").read_text())["status"]
    == "running"
  )
  resumed = run_cli(
    "trainer.task", *common, f"--model_dir={interrupted_dir}", check=True
  )
  assert "Resumed from" in resumed.stdout
  a, b = _final_state(tmp_path / "a"), _final_state(interrupted_dir)
  assert int(a["step/.ATTRIBUTES/VARIABLE_VALUE"]) == 32
  assert a.keys() == b.keys()
  differing = sorted(k for k in a if not np.array_equal(a[k], b[k]))
  assert not differing, differing  # Bit for bit, the averages included.
  # The checkpoint holds the averages: keys are positional, so find each
  # kernel's by value (near the kernel; Adam's moments are not).
  kernels = [
    k
    for k in a
    if k.startswith("optimizer/_trainable_variables/") and a[k].ndim >= 2
  ]
  averages = [
    k
    for k in a
    if k.startswith("optimizer/_variables/")
    and any(
      a[k].shape == a[w].shape
      and np.linalg.norm(a[k] - a[w]) < 0.2 * np.linalg.norm(a[w])
      for w in kernels
    )
  ]
  assert len(kernels) == len(averages) == 4, (kernels, averages)
  # The control: the same comparison sees one average off by one ulp.
  planted = dict(b, **{averages[0]: np.nextafter(b[averages[0]], np.inf)})
  assert [k for k in a if not np.array_equal(a[k], planted[k])] == averages[:1]


def test_cli_records_and_lists_both_options(run_cli, tmp_path):
  model_dir = tmp_path / "cli"
  run_cli(
    "trainer.task",
    *TINY,
    "--epochs=1",
    "--steps_per_epoch=2",
    "--clip_norm=2.5",
    "--ema_decay=0.99",
    f"--model_dir={model_dir}",
    check=True,
  )
  config = json.loads((model_dir / "config.json").read_text())
  assert config["clip_norm"] == 2.5 and config["ema_decay"] == 0.99
  assert (model_dir / "export" / "model.keras").exists()
  helpshort = run_cli("trainer.task", "--helpshort", timeout=120).stdout
  assert "--clip_norm" in helpshort and "--ema_decay" in helpshort
  for flag, value in (("ema_decay", "1.0"), ("clip_norm", "-1")):
    bad = run_cli(
      "trainer.task",
      *TINY,
      f"--{flag}={value}",
      f"--model_dir={tmp_path / 'bad'}",
      timeout=120,
    )
    assert bad.returncode != 0
    assert f"--{flag}" in bad.stderr and "Traceback" not in bad.stderr, (
      bad.stderr
    )
