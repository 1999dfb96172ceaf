"""Several workers, and training that survives being killed (all on CPU, loopback)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

from conftest import REPO
from conftest import cli_env
from conftest import read_jsonl
import numpy as np
import pytest

TINY = ["--config=tiny"]


def _digests(text):
  return dict(
    re.findall(
      r"\[worker (\d)\] Finished: .*, weights sha256 ([0-9a-f]{64})$",
      text,
      re.MULTILINE,
    )
  )


def _popen(module, args, cache_dir, **env):
  return subprocess.Popen(
    [sys.executable, "-m", module, *args],
    cwd=REPO,
    env=cli_env(cache_dir, **env),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def kill_9_after_checkpoint(args, model_dir, step, cache_dir, timeout=300):
  """Starts `trainer.task *args --model_dir=model_dir` and kills it (SIGKILL)
  as soon as its step-`step` checkpoint exists."""
  process = _popen(
    "trainer.task", [*args, f"--model_dir={model_dir}"], cache_dir
  )
  deadline = time.time() + timeout
  while not (model_dir / "checkpoints" / f"ckpt-{step}.index").exists():
    assert time.time() < deadline and process.poll() is None
    time.sleep(0.02)
  process.kill()
  process.wait()


def _wait_for_line(process, pattern, timeout):
  """Reads the process's output until a line matches; returns all lines."""
  lines, deadline = [], time.time() + timeout
  while time.time() < deadline:
    line = process.stdout.readline()
    if not line:
      break
    lines.append(line)
    if re.search(pattern, line):
      return lines
  raise AssertionError(f"no line matching {pattern!r}:\n{''.join(lines[-50:])}")


@pytest.mark.multiprocess
def test_two_workers_end_with_identical_weights(run_cli, tmp_path):
  model_dir = tmp_path / "mw"
  result = run_cli(
    "launch.local",
    "--workers=2",
    "--",
    *TINY,
    "--strategy=multi_worker",
    f"--model_dir={model_dir}",
    timeout=600,
  )
  assert result.returncode == 0, result.stdout[-4000:]
  digests = _digests(result.stdout)
  # Trainable weights and BatchNorm moving statistics, bit for bit.
  assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]
  assert (
    "[worker 0] task=worker:0 chief=True strategy=multi_worker" in result.stdout
  )
  assert "[worker 1] task=worker:1 chief=False" in result.stdout
  assert "replicas=2" in result.stdout
  if "precision=mixed_bfloat16" in result.stdout:  # CPUs with AVX512_BF16/AMX
    assert "all_reduce=bfloat16" in result.stdout  # half the bytes per step
  rows = read_jsonl(model_dir / "metrics.jsonl")
  assert [r["epoch"] for r in rows] == [1, 2, 3]  # written once, by the chief
  assert rows[-1]["val_accuracy"] >= 0.8
  assert (model_dir / "export" / "model.keras").exists()


@pytest.mark.multiprocess
def test_killing_a_worker_stops_the_job_promptly(tmp_path, cache_dir):
  launcher = _popen(
    "launch.local",
    [
      "--workers=2",
      "--grace_secs=5",
      "--",
      *TINY,
      "--epochs=1000",
      f"--model_dir={tmp_path / 'k'}",
    ],
    cache_dir,
  )
  lines = _wait_for_line(launcher, r"\[worker 0\] epoch 1/", timeout=300)
  pid = int(re.search(r"worker 1 pid (\d+)", "".join(lines)).group(1))
  killed_at = time.time()
  os.kill(pid, signal.SIGKILL)
  code = launcher.wait(timeout=120)
  elapsed = time.time() - killed_at
  output = "".join(lines) + launcher.stdout.read()
  assert code != 0
  assert "worker 1 exited with -9" in output or "exited with" in output
  assert elapsed < 60, elapsed


@pytest.mark.multiprocess
def test_sigterm_saves_exits_preempted_and_resumes(tmp_path, cache_dir):
  model_dir = tmp_path / "pre"
  args = [*TINY, "--epochs=1000", f"--model_dir={model_dir}"]
  process = _popen("trainer.task", args, cache_dir)
  _wait_for_line(process, r"^epoch 2/", timeout=300)
  sent = time.time()
  process.send_signal(signal.SIGTERM)
  output = process.stdout.read()
  code = process.wait(timeout=60)
  assert time.time() - sent < 30
  assert code == 75, output[-3000:]
  match = re.search(
    r"Preempted \(SIGTERM\): saved step (\d+); run the same command to "
    r"resume\.",
    output,
  )
  assert match, output[-3000:]
  saved_step = int(match.group(1))
  status = json.loads((model_dir / "status.json").read_text())
  assert status == {**status, "status": "preempted", "step": saved_step}
  assert (model_dir / "checkpoints" / f"ckpt-{saved_step}.index").exists()

  resumed = _popen(
    "trainer.task", [*TINY, "--epochs=3", f"--model_dir={model_dir}"], cache_dir
  )
  out = resumed.stdout.read()
  assert resumed.wait(timeout=300) in (0,), out[-3000:]
  assert f"Resumed from {model_dir}/checkpoints/ckpt-{saved_step}: epoch" in out
  assert f"step {saved_step}." in out


def _final_state(model_dir):
  """Every variable of the latest checkpoint: model, optimizer, loop state."""
  import tensorflow as tf

  reader = tf.train.load_checkpoint(str(model_dir / "checkpoints"))
  values = {
    name: np.asarray(reader.get_tensor(name))
    for name in reader.get_variable_to_shape_map()
    if "save_counter" not in name
  }
  # Numbers only (the object graph is a serialized proto).
  return {
    name: value
    for name, value in values.items()
    if np.issubdtype(value.dtype, np.number)
  }


@pytest.mark.multiprocess
def test_kill_9_and_resume_matches_uninterrupted_run(
  tmp_path, cache_dir, run_cli
):
  common = [
    *TINY,
    "--deterministic",
    "--epochs=3",
    "--checkpoint_every_steps=4",
    "--steps_per_call=2",
    "--precision=float32",
    "--export",
  ]
  run_cli("trainer.task", *common, f"--model_dir={tmp_path / 'a'}", check=True)
  interrupted_dir = tmp_path / "b"
  # Mid-epoch 2 (16 steps per epoch): step 20 is saved, then the kill lands.
  kill_9_after_checkpoint(common, interrupted_dir, 20, cache_dir)
  assert (
    json.loads((interrupted_dir / "status.json").read_text())["status"]
    == "running"
  )
  resumed = run_cli(
    "trainer.task", *common, f"--model_dir={interrupted_dir}", check=True
  )
  assert "Resumed from" in resumed.stdout
  a, b = _final_state(tmp_path / "a"), _final_state(interrupted_dir)
  assert a.keys() == b.keys()
  assert any("optimizer" in k for k in a) and any("model" in k for k in a)
  assert int(a["step/.ATTRIBUTES/VARIABLE_VALUE"]) == 48
  differing = sorted(k for k in a if not np.array_equal(a[k], b[k]))
  # --deterministic on one CPU: bit for bit, every variable.
  assert not differing, differing
  # The epoch the kill landed in reports all its steps, as if never killed.
  rows_a = read_jsonl(tmp_path / "a" / "metrics.jsonl")
  rows_b = read_jsonl(interrupted_dir / "metrics.jsonl")
  assert [r["epoch"] for r in rows_b] == [1, 2, 3]
  for key in ("loss", "accuracy", "auc", "val_loss", "val_accuracy"):
    assert [r[key] for r in rows_a] == [r[key] for r in rows_b], key


def _checkpoints_are_finite(directory):
  """Every weight and optimizer slot of every checkpoint is finite (the loop
  state may hold +inf on purpose: "no best value yet")."""
  import tensorflow as tf

  checked = 0
  for index in directory.glob("ckpt-*.index"):
    reader = tf.train.load_checkpoint(str(index)[: -len(".index")])
    for name in reader.get_variable_to_shape_map():
      if not name.startswith(("model/", "optimizer/")):
        continue
      value = reader.get_tensor(name)
      if np.issubdtype(np.asarray(value).dtype, np.floating):
        assert np.all(np.isfinite(value)), (index, name)
        checked += 1
  assert checked, f"no weights found in {directory}"


def _nan_config(policy, model_dir, cache_dir, precision="float32", **changes):
  import configs

  return configs.get_config("tiny").replace(
    epochs=2,
    nan_policy=policy,
    model_dir=str(model_dir),
    synthetic_dir=os.path.join(cache_dir, "alexnet_tf", "synthetic"),
    checkpoint_every_steps=8,
    steps_per_call=4,
    export=False,
    lr_schedule="cosine",
    precision=precision,
    **changes,
  )


def _trainer_with_nan_at(
  policy, model_dir, cache_dir, step, precision="float32", **changes
):
  """A real NaN in the network before the call at `step`, through the Python API."""
  from trainer import train as train_lib

  trainer = train_lib.Trainer(
    _nan_config(policy, model_dir, cache_dir, precision, **changes)
  )
  real_call, calls = trainer.train_steps, []

  def call(iterator, num_steps, control):
    calls.append(int(trainer.state.step.numpy()))
    if calls[-1] == step and calls.count(step) == 1:
      kernel = trainer.model.get_layer("predictions").kernel
      kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    return real_call(iterator, num_steps, control)

  trainer.train_steps = call
  return trainer


def test_nan_loss_stops_with_the_step(tmp_path, cache_dir):
  from trainer import train as train_lib

  with pytest.raises(train_lib.TrainingError, match=r"NaN/Inf at step 13"):
    _trainer_with_nan_at("error", tmp_path / "err", cache_dir, 12).run()


# float16 wraps the optimizer in loss scaling, whose step counter differs
# between Keras versions.
@pytest.mark.parametrize(
  "precision",
  ["float32", pytest.param("mixed_float16", marks=pytest.mark.slow)],
)
def test_nan_loss_rolls_back_and_keeps_the_schedule_on_the_step(
  tmp_path, cache_dir, precision
):
  import math

  from trainer import optimization
  from trainer import outputs

  trainer = _trainer_with_nan_at(
    "rollback", tmp_path / "rb", cache_dir, 12, precision
  )
  summary = trainer.run()
  assert summary["status"] == "completed" and summary["step"] == 32
  assert int(trainer.state.rollbacks.numpy()) == 1
  assert float(trainer.state.lr_multiplier.numpy()) == 0.5
  weights = trainer.model.get_layer("predictions").kernel.numpy()
  assert np.all(np.isfinite(weights))
  # The schedule's position is the run's step (a float16 skip would hold
  # it back, so allow those); the logged rate is the cosine rate of the last
  # step, halved by the rollback.
  steps = int(optimization.step_counter(trainer.optimizer).numpy())
  assert steps == 32 or (precision == "mixed_float16" and 28 <= steps <= 32)
  logged = outputs.read_metrics(str(tmp_path / "rb"))[-1]["learning_rate"]
  cosine = 3e-3 * 0.5 * (1 + math.cos(math.pi * (steps - 1) / 32)) * 0.5
  assert logged == pytest.approx(cosine, rel=1e-5)


def test_rollback_to_the_first_checkpoint_keeps_the_weight_averages(
  tmp_path, cache_dir
):
  """--ema_decay: the NaN at step 4 rolls back to the step-0 checkpoint,
  taken before any update; the averages it restores are the weights then
  (Keras starts them at zero), or validation, best/ and the export would
  use weights shrunk towards zero for about 1/(1-decay) steps."""
  from trainer import optimization

  trainer = _trainer_with_nan_at(
    "rollback", tmp_path / "ema", cache_dir, 4, ema_decay=0.99
  )
  restore, seen = trainer.checkpoints.restore_latest, []

  def restore_and_look():
    path = restore()
    averages = optimization.weight_averages(trainer.optimizer)
    seen.append(
      (
        path,
        [np.asarray(a) for a in averages],
        [np.asarray(w) for w in trainer.model.trainable_variables],
      )
    )
    return path

  trainer.checkpoints.restore_latest = restore_and_look
  assert trainer.run()["status"] == "completed"
  rolled_back = [s for s in seen if s[0] and s[0].endswith("ckpt-0")]
  assert rolled_back and int(trainer.state.rollbacks.numpy()) == 1
  _, averages, weights = rolled_back[0]
  assert any(np.abs(w).max() > 0 for w in weights)
  for average, weight in zip(averages, weights):
    np.testing.assert_array_equal(average, weight)


def test_non_finite_weights_are_never_checkpointed(tmp_path, cache_dir):
  """The 8th update (the last of the call ending at the checkpoint boundary,
  step 8) gets a NaN gradient: every loss of that call is finite, but the
  weights it leaves are not."""
  import tensorflow as tf

  from trainer import train as train_lib
  from trainer.loop import step as step_lib

  class NanUpdateAtStep8(step_lib.TrainStep):
    def apply_gradients(self, gradients):
      poisoned = tf.logical_and(
        self.optimizer.iterations == 7, self.state.rollbacks == 0
      )
      factor = tf.where(poisoned, np.float32(np.nan), np.float32(1.0))
      super().apply_gradients([g * factor for g in gradients])

  trainer = train_lib.Trainer(
    _nan_config("rollback", tmp_path / "rb", cache_dir)
  )
  trainer.step = NanUpdateAtStep8(
    trainer.config,
    trainer.strategy,
    trainer.model,
    trainer.optimizer,
    trainer.state,
  )
  trainer.train_steps = trainer.step.make_call()
  summary = trainer.run()
  assert summary["status"] == "completed" and summary["step"] == 32
  assert int(trainer.state.rollbacks.numpy()) == 1
  _checkpoints_are_finite(tmp_path / "rb" / "checkpoints")
  _checkpoints_are_finite(tmp_path / "rb" / "best")
