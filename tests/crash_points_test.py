"""Killed at any point, re-run, same result.

Every point where a run's durable state changes is named in trainer/faults.py;
ALEXNET_CRASH_AT=POINT[:N] makes the trainer die there as kill -9 would
(os._exit: no cleanup, no flush). Each test kills the tiny run at a point,
runs the same command again until it finishes, and compares what it left
with the uninterrupted run's: the final checkpoint (every variable, bit for
bit), best/, metrics.jsonl (every figure but throughput), status.json, and
the export (whole, and the same outputs on fixed inputs). Deterministic ops
make the equality exact; a planted bug (a state field left out of the
checkpoints) shows the comparison catching a difference.
"""

import json
import os
import random
import subprocess
import sys

from conftest import REPO
from conftest import cli_env
from conftest import read_jsonl
import numpy as np
import pytest
import tensorflow as tf

from trainer import faults

pytestmark = pytest.mark.multiprocess

# Two epochs of 4 steps, a step checkpoint every 2 steps, 2 steps a call.
ARGS = (
  "--config=tiny",
  "--epochs=2",
  "--deterministic",
  "--precision=float32",
  "--synthetic_train_examples=128",
  "--synthetic_eval_examples=64",
  "--steps_per_call=2",
  "--checkpoint_every_steps=2",
  "--keep_checkpoints=10",
)
# Ignored when comparing: throughput, and how many times a checkpoint was
# written (a killed run's save is written again).
UNCOMPARED = {"images_per_sec", "time"}
BOOKKEEPING = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/")
# The last run's stdout (the launcher says which worker exited how).
_LAST_OUTPUT = [""]


def _train(
  model_dir,
  cache_dir,
  crash_at="",
  nan_at_step=0,
  script=None,
  extra=(),
  launcher=(),
  env=None,
):
  """The CLI once; returns the exit code (or raises with its output).

  launcher: a launch module and its flags, run with the trainer flags after
  `--` (e.g. launch.local starting two workers); env: more variables."""
  env = cli_env(
    cache_dir,
    ALEXNET_CRASH_AT=crash_at or None,
    ALEXNET_NAN_AT_STEP=str(nan_at_step) if nan_at_step else None,
    **(env or {}),
  )
  if script:
    command = [sys.executable, script]
  elif launcher:
    command = [sys.executable, "-m", *launcher, "--"]
  else:
    command = [sys.executable, "-m", "trainer.task"]
  result = subprocess.run(
    [*command, *ARGS, *extra, f"--model_dir={model_dir}"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  _LAST_OUTPUT[:] = [result.stdout]
  if result.returncode not in (0, faults.CRASH_EXIT_CODE):
    raise AssertionError(
      f"exit {result.returncode}:\n{result.stdout[-2000:]}"
      f"\n{result.stderr[-3000:]}"
    )
  return result.returncode


def _until_finished(model_dir, cache_dir, **kwargs):
  """Re-runs the same command (no crash) until it exits 0."""
  for _ in range(3):
    if _train(model_dir, cache_dir, **kwargs) == 0:
      return
  raise AssertionError(f"{model_dir} did not finish in 3 runs")


def _checkpoint(directory):
  path = tf.train.latest_checkpoint(str(directory))
  assert path, f"no checkpoint in {directory}"
  reader = tf.train.load_checkpoint(path)
  return os.path.basename(path), {
    name: reader.get_tensor(name)
    for name, _ in tf.train.list_variables(path)
    if not name.startswith(BOOKKEEPING)
  }


def _fixed_images():
  rng = np.random.default_rng(7)
  return rng.integers(0, 256, (6, 32, 32, 3)).astype(np.float32)


def snapshot(model_dir):
  """What a finished run leaves, in comparable form."""
  export = model_dir / "export"
  assert (export / "COMPLETE").exists(), f"no whole export in {export}"
  serve = tf.saved_model.load(str(export / "saved_model")).signatures["serve"]
  import keras

  keras_model = keras.models.load_model(export / "model.keras")
  status = json.loads((model_dir / "status.json").read_text())
  return {
    "checkpoint": _checkpoint(model_dir / "checkpoints"),
    "best": _checkpoint(model_dir / "best"),
    "metrics": [
      {k: v for k, v in r.items() if k not in UNCOMPARED}
      for r in read_jsonl(model_dir / "metrics.jsonl")
    ],
    "status": {k: v for k, v in status.items() if k not in UNCOMPARED},
    "served": next(
      iter(serve(image=tf.constant(_fixed_images())).values())
    ).numpy(),
    "keras": keras_model(_fixed_images()).numpy(),
  }


def differences(got, want):
  """Where two snapshots differ (empty when equal, bit for bit)."""
  found = []
  for key in ("checkpoint", "best"):
    (got_name, got_vars), (want_name, want_vars) = got[key], want[key]
    if got_name != want_name:
      found.append(f"{key}: {got_name} != {want_name}")
    if set(got_vars) != set(want_vars):
      found.append(f"{key}: variables {sorted(set(got_vars) ^ set(want_vars))}")
    found += [
      f"{key}: {name}"
      for name in sorted(set(got_vars) & set(want_vars))
      if not np.array_equal(got_vars[name], want_vars[name])
    ]
  for key in ("metrics", "status"):
    if got[key] != want[key]:
      found.append(f"{key}: {got[key]} != {want[key]}")
  for key in ("served", "keras"):
    if not np.array_equal(got[key], want[key]):
      found.append(f"{key}: outputs differ")
  return found


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
  """The reference runs, without and with a NaN at step 4 (rolled back)."""
  runs = {}
  for name, nan_at_step in (("plain", 0), ("nan", 4)):
    model_dir = tmp_path_factory.mktemp("uninterrupted") / name
    extra = ("--nan_policy=rollback",) if nan_at_step else ()
    assert (
      _train(model_dir, cache_dir, nan_at_step=nan_at_step, extra=extra) == 0
    )
    runs[name] = snapshot(model_dir)
  assert differences(runs["nan"], runs["plain"])  # The NaN run differs.
  return runs


# Every named point at its first visit, and the points a run meets several
# times at a later visit too (mid-epoch, second epoch).
CASES = [(point, 1) for point in faults.POINTS if point != "rollback:after"] + [
  ("checkpoint_save:before", 3),
  ("checkpoint_save:after", 3),
  ("checkpoint_save:after", 5),
  ("epoch_end:before", 2),
  ("metrics:after", 2),
  ("epoch_checkpoint:after", 2),
  ("early_stop:decided", 2),
]


@pytest.mark.parametrize(
  "point,visit", CASES, ids=[f"{p}:{n}" for p, n in CASES]
)
def test_killed_at_a_point_then_rerun_ends_as_the_uninterrupted_run(
  uninterrupted, tmp_path, cache_dir, point, visit
):
  model_dir = tmp_path / "run"
  code = _train(model_dir, cache_dir, crash_at=f"{point}:{visit}")
  assert code == faults.CRASH_EXIT_CODE, f"{point}:{visit} was not reached"
  _until_finished(model_dir, cache_dir)
  assert differences(snapshot(model_dir), uninterrupted["plain"]) == []


# After the NaN at step 4 is rolled back: at once (no checkpoint holds the
# skipped batches yet), before step 4 came round again (the step-4
# checkpoint), and at the step-6 checkpoint, the first that records them.
AFTER_ROLLBACK = {
  "at_once": "rollback:after:1",
  "before_it": "checkpoint_save:after:3",
  "next_checkpoint": "checkpoint_save:after:5",
}
ROLLBACK = dict(nan_at_step=4, extra=("--nan_policy=rollback",))


@pytest.mark.parametrize("when", sorted(AFTER_ROLLBACK))
def test_killed_around_a_rollback_then_rerun_reads_the_same_batches(
  uninterrupted, tmp_path, cache_dir, when
):
  """A NaN at step 4 rolls back (the batches of that call are skipped); the
  re-run resumes its input after the skipped batches, as the uninterrupted
  run did. (The divergence is deterministic, as a real one under
  --deterministic is: a re-run that reaches step 4 again meets it again.)"""
  model_dir = tmp_path / "run"
  code = _train(model_dir, cache_dir, crash_at=AFTER_ROLLBACK[when], **ROLLBACK)
  assert code == faults.CRASH_EXIT_CODE
  _until_finished(model_dir, cache_dir, **ROLLBACK)
  assert differences(snapshot(model_dir), uninterrupted["nan"]) == []


PLANTED_INPUT_BUG = """
import runpy, sys
from trainer import train
# The bug: the batches a rollback skipped are not checkpointed, so a resumed
# run starts its input that many steps early.
trackables = train._TrainState.trackables
train._TrainState.trackables = lambda self: {
    k: v for k, v in trackables(self).items()
    if k != "rolled_back_steps_in_epoch"}
sys.argv = ["trainer.task", *sys.argv[1:]]
runpy.run_module("trainer.task", run_name="__main__")
"""


def test_the_comparison_catches_a_lost_input_position(
  uninterrupted, tmp_path, cache_dir
):
  """Negative control of the test above: without the skipped batches in
  the checkpoint, the resumed run trains on other batches."""
  script = tmp_path / "planted_bug.py"
  script.write_text(PLANTED_INPUT_BUG)
  model_dir = tmp_path / "run"
  code = _train(
    model_dir,
    cache_dir,
    crash_at=AFTER_ROLLBACK["next_checkpoint"],
    script=str(script),
    **ROLLBACK,
  )
  assert code == faults.CRASH_EXIT_CODE
  _until_finished(model_dir, cache_dir, script=str(script), **ROLLBACK)
  found = differences(snapshot(model_dir), uninterrupted["nan"])
  assert any(f.startswith("checkpoint:") for f in found), found


def test_a_chaos_run_killed_five_times_ends_as_the_uninterrupted_run(
  uninterrupted, tmp_path, cache_dir
):
  """Five kills in a row at five seeded random points, in the order a run
  meets them (each at its first visit in that run's process, so every
  re-run can still meet the next)."""
  model_dir = tmp_path / "run"
  rng = random.Random(20261206)
  points = sorted(
    rng.sample([p for p in faults.POINTS if p != "rollback:after"], 5),
    key=faults.POINTS.index,
  )
  for point in points:
    assert _train(model_dir, cache_dir, crash_at=point) == (
      faults.CRASH_EXIT_CODE
    ), f"{point} was not reached ({points})"
  _until_finished(model_dir, cache_dir)
  assert differences(snapshot(model_dir), uninterrupted["plain"]) == []


PLANTED_BUG = '''
import runpy, sys
from trainer import train
# The bug: the epoch's running training totals are not checkpointed, so a run
# resumed mid-epoch reports only the steps after the restart.
trackables = train._TrainState.trackables
train._TrainState.trackables = lambda self: {
    k: v for k, v in trackables(self).items() if k != "epoch_totals"}
sys.argv = ["trainer.task", *sys.argv[1:]]
runpy.run_module("trainer.task", run_name="__main__")
'''


def test_the_comparison_catches_a_state_field_left_out(
  uninterrupted, tmp_path, cache_dir
):
  """Negative control: a planted bug makes a kill mid-epoch visible."""
  script = tmp_path / "planted_bug.py"
  script.write_text(PLANTED_BUG)
  model_dir = tmp_path / "run"
  assert (
    _train(
      model_dir,
      cache_dir,
      crash_at="checkpoint_save:after:3",
      script=str(script),
    )
    == faults.CRASH_EXIT_CODE
  )
  _until_finished(model_dir, cache_dir, script=str(script))
  found = differences(snapshot(model_dir), uninterrupted["plain"])
  assert any(f.startswith("metrics:") for f in found), found


MIRRORED = ("--strategy=mirrored", "--cpu_devices=2")


@pytest.fixture(scope="module")
def mirrored_reference(tmp_path_factory, cache_dir):
  """The uninterrupted run on two mirrored replicas."""
  reference = tmp_path_factory.mktemp("mirrored") / "reference"
  assert _train(reference, cache_dir, extra=MIRRORED) == 0
  return snapshot(reference)


@pytest.mark.parametrize(
  "point,visit",
  [
    ("epoch_checkpoint:after", 1),
    ("export:saved_model_written", 1),
    ("checkpoint_save:after", 3),
  ],
)
def test_two_mirrored_replicas_killed_then_rerun_end_as_uninterrupted(
  mirrored_reference, tmp_path, cache_dir, point, visit
):
  model_dir = tmp_path / "run"
  assert (
    _train(model_dir, cache_dir, crash_at=f"{point}:{visit}", extra=MIRRORED)
    == faults.CRASH_EXIT_CODE
  )
  _until_finished(model_dir, cache_dir, extra=MIRRORED)
  assert differences(snapshot(model_dir), mirrored_reference) == []


# Two workers on 127.0.0.1 started by launch.local, which stops the others
# when one dies; a restarted job is the same command again, as Vertex AI or
# a Kubernetes JobSet restarts every worker of a failed job.
WORKERS = ("launch.local", "--workers=2", "--grace_secs=5")
MULTI_WORKER = ("--strategy=multi_worker",)


@pytest.fixture(scope="module")
def workers_reference(tmp_path_factory, cache_dir):
  """The uninterrupted run on two workers."""
  reference = tmp_path_factory.mktemp("workers") / "reference"
  assert _train(reference, cache_dir, extra=MULTI_WORKER, launcher=WORKERS) == 0
  return snapshot(reference)


# Where the workers coordinate: a step checkpoint (every worker saves; the
# non-chief killed after its save, the chief before its), the export (the
# chief's; every worker takes part).
WORKER_CASES = [
  (1, "checkpoint_save:after", 3),
  (0, "checkpoint_save:before", 3),
  (0, "export:saved_model_written", 1),
]


@pytest.mark.parametrize(
  "worker,point,visit",
  WORKER_CASES,
  ids=[f"worker{w}-{p}:{n}" for w, p, n in WORKER_CASES],
)
def test_one_of_two_workers_killed_then_job_restarted_ends_as_uninterrupted(
  workers_reference, tmp_path, cache_dir, worker, point, visit
):
  model_dir = tmp_path / "run"
  code = _train(
    model_dir,
    cache_dir,
    crash_at=f"{point}:{visit}",
    extra=MULTI_WORKER,
    launcher=WORKERS,
    env={"ALEXNET_CRASH_WORKER": f"worker:{worker}"},
  )
  assert code == faults.CRASH_EXIT_CODE, f"worker {worker} did not die there"
  assert f"[launch] worker {worker} exited with {code}" in _LAST_OUTPUT[0]
  _until_finished(model_dir, cache_dir, extra=MULTI_WORKER, launcher=WORKERS)
  assert differences(snapshot(model_dir), workers_reference) == []


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  import gcs_emulator

  with gcs_emulator.running(str(tmp_path_factory.mktemp("gcs"))) as emulator:
    emulator.create_bucket("crash-points")
    yield emulator


def _download(gcs, prefix, directory):
  """Every object under gs://crash-points/PREFIX, with the real client."""
  from google.auth.credentials import AnonymousCredentials
  from google.cloud import storage

  client = storage.Client(
    project="test",
    credentials=AnonymousCredentials(),
    client_options={"api_endpoint": gcs.url},
  )
  for blob in client.list_blobs("crash-points", prefix=prefix + "/"):
    path = directory / blob.name[len(prefix) + 1 :]
    path.parent.mkdir(parents=True, exist_ok=True)
    blob.download_to_filename(str(path))
  return directory


# On gs:// a write is an object upload, not an atomic rename: a checkpoint
# mid-epoch, and the export between its files. (About 50 s each: the other
# points run on local disk above.)
GCS_CASES = [
  ("checkpoint_save:after", 3),
  ("export:keras_written", 1),
]


@pytest.mark.parametrize(
  "point,visit", GCS_CASES, ids=[f"{p}:{n}" for p, n in GCS_CASES]
)
def test_killed_with_the_model_dir_on_gcs_then_rerun_ends_as_uninterrupted(
  uninterrupted, gcs, tmp_path, cache_dir, point, visit
):
  prefix = f"run-{point.replace(':', '-')}-{visit}"
  model_dir = f"gs://crash-points/{prefix}"
  code = _train(model_dir, cache_dir, crash_at=f"{point}:{visit}", env=gcs.env)
  assert code == faults.CRASH_EXIT_CODE, f"{point}:{visit} was not reached"
  _until_finished(model_dir, cache_dir, env=gcs.env)
  local = _download(gcs, prefix, tmp_path / "run")
  assert differences(snapshot(local), uninterrupted["plain"]) == []
