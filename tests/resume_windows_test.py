"""The windows a kill or a divergence used to open, each closed in place:
what a re-run derives from its restored state, what it refuses, what the
NaN check covers and where a rollback leaves the schedule. In-process with
the tiny model; tests/crash_points_test.py kills real runs at every point."""

import contextlib
import json
import logging

from conftest import copy_run
import numpy as np
import pytest
from resilience_test import _nan_config
from resilience_test import _trainer_with_nan_at

from trainer import optimization
from trainer import outputs
from trainer import train as train_lib
from trainer.errors import UserError


@pytest.mark.cpu_budget(20)
def test_early_stop_is_rederived_from_the_checkpoint_not_status_json(
  tmp_path, cache_dir
):
  """A kill after the epoch's checkpoint but before status.json said
  'early_stopped' must not train another epoch."""
  config = _nan_config("error", tmp_path / "run", cache_dir).replace(
    epochs=3, early_stopping_patience=1
  )
  trainer = train_lib.Trainer(config.replace(epochs=1))
  assert trainer.run()["status"] == "completed"
  # As the epoch-end checkpoint of a run whose patience ran out leaves it.
  trainer = train_lib.Trainer(config.replace(epochs=1))
  trainer.checkpoints.restore_latest()
  trainer.state.epochs_without_improvement.assign(1)
  trainer.checkpoints.save(int(trainer.state.step.numpy()))
  (tmp_path / "run" / "status.json").write_text(
    json.dumps({"status": "running", "epoch": 1, "step": 8})
  )
  copy_run(tmp_path / "run", tmp_path / "control")
  summary = train_lib.Trainer(config).run()
  assert summary["status"] == "early_stopped" and summary["epoch"] == 1
  assert (
    json.loads((tmp_path / "run" / "status.json").read_text())["status"]
    == "early_stopped"
  )
  # Negative control: with patience left, the same state trains on.
  summary = train_lib.Trainer(
    config.replace(
      model_dir=str(tmp_path / "control"), early_stopping_patience=2, epochs=2
    )
  ).run()
  assert summary["epoch"] == 2


@pytest.mark.parametrize(
  "given,message",
  [
    (
      "mixed_bfloat16",
      "--precision=mixed_bfloat16, but this model dir's "
      "checkpoints were written in float32",
    ),
    ("mixed_float16", "--precision=mixed_float16, but"),
  ],
)
def test_another_precision_on_resume_is_one_line(
  tmp_path, cache_dir, given, message
):
  config = _nan_config("error", tmp_path / "run", cache_dir).replace(epochs=1)
  train_lib.Trainer(config).run()
  recorded = json.loads((tmp_path / "run" / "config.json").read_text())
  assert recorded["resolved"]["precision"] == "float32"
  with pytest.raises(UserError) as raised:
    train_lib.Trainer(config.replace(epochs=2, precision=given)).run()
  assert str(raised.value).startswith(message), raised.value
  assert "use --precision=float32, or a new --model_dir" in str(raised.value)
  # The same precision resumes.
  assert train_lib.Trainer(config.replace(epochs=2)).run()["epoch"] == 2


def test_auto_resolving_to_another_precision_says_so():
  from trainer import config as config_lib

  assert config_lib.precision_conflict(
    "mixed_bfloat16", "float32", "auto"
  ).startswith(
    "--precision=auto resolves to float32 on this machine, but this "
    "model dir's checkpoints were written in mixed_bfloat16"
  )
  assert config_lib.precision_conflict(None, "float32", "auto") is None


def test_an_optimizer_variable_that_overflows_is_caught_before_a_checkpoint(
  tmp_path, cache_dir
):
  """A weight average (--ema_decay) at inf leaves the weights finite, so a
  check of the weights alone lets it into the checkpoints - and into best/
  and the export, which use the averages."""
  trainer = train_lib.Trainer(
    _nan_config("error", tmp_path / "run", cache_dir).replace(
      epochs=1, ema_decay=0.9
    )
  )
  real_call = trainer.train_steps

  def call(iterator, num_steps, control):
    if int(trainer.state.step.numpy()) == 4:
      average = optimization.weight_averages(trainer.optimizer)[-1]
      average.assign(np.full(average.shape, np.inf, np.float32))
    return real_call(iterator, num_steps, control)

  trainer.train_steps = call
  with pytest.raises(
    train_lib.TrainingError,
    match="weights or optimizer state became NaN/Inf at step 8",
  ):
    trainer.run()
  weights = trainer.model.get_layer("predictions").bias.numpy()
  assert np.all(np.isfinite(weights))  # What a check of the weights sees.


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_a_rollback_puts_the_schedule_where_the_failed_call_started(
  tmp_path, cache_dir, precision
):
  """The optimizer's count after a rollback is its count before the failed
  call - not the run's step, which under float16 also counts the steps
  loss scaling skipped."""
  trainer = _trainer_with_nan_at(
    "rollback", tmp_path / "rb", cache_dir, 12, precision
  )
  seen = {}
  real_recover = trainer.controller.recovery.recover

  def recover(what, counter):
    seen["before"] = counter
    real_recover(what, counter)
    seen["after"] = int(optimization.step_counter(trainer.optimizer).numpy())
    seen["step"] = int(trainer.state.step.numpy())

  trainer.controller.recovery.recover = recover
  if precision == "mixed_float16":
    # A loss scale far too large at step 4: loss scaling skips the steps
    # whose gradients overflow, and halves the scale, until they fit.
    nan_call = trainer.train_steps

    def call(iterator, num_steps, control):
      if int(trainer.state.step.numpy()) == 4:
        trainer.optimizer.dynamic_scale.assign(2.0**60)
      return nan_call(iterator, num_steps, control)

    trainer.train_steps = call
  assert trainer.run()["status"] == "completed"
  assert seen["after"] == seen["before"]
  assert seen["step"] == 12
  if precision == "float32":
    assert seen["before"] == 12
  else:
    # Loss scaling skipped steps while its scale came down: the count the
    # schedule runs on is behind the run's step, and stays so (the
    # previous code set it to the step).
    assert seen["before"] < 12, seen
  logged = outputs.read_metrics(str(tmp_path / "rb"))[-1]["learning_rate"]
  final = int(optimization.step_counter(trainer.optimizer).numpy())
  assert logged == pytest.approx(float(trainer.schedule(final - 1)), rel=1e-6)


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_resumes_from_the_one_before(
  tmp_path, cache_dir
):
  """A checkpoint whose data file a failing disk or an interrupted copy cut
  short is skipped for the previous one, with a warning; the run goes on."""
  config = _nan_config("error", tmp_path / "run", cache_dir).replace(epochs=1)
  train_lib.Trainer(config).run()
  checkpoints = tmp_path / "run" / "checkpoints"
  # 16 steps an epoch, a checkpoint every 8: the newest is ckpt-16.
  (data,) = checkpoints.glob("ckpt-16.data-*")
  data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
  trainer = train_lib.Trainer(config.replace(epochs=2))
  with trainer_warnings() as warnings:
    assert trainer.checkpoints.restore_latest().endswith("ckpt-8")
  assert any("ckpt-16 is damaged" in w for w in warnings)
  assert int(trainer.state.step.numpy()) == 8
  assert trainer.run()["step"] == 32


@contextlib.contextmanager
def trainer_warnings():
  """Messages of the trainer's own logger (its stdout handler belongs to
  whichever test first built a Trainer in this process)."""
  messages = []
  handler = logging.Handler()
  handler.emit = lambda record: messages.append(record.getMessage())
  logging.getLogger("trainer").addHandler(handler)
  try:
    yield messages
  finally:
    logging.getLogger("trainer").removeHandler(handler)


@pytest.mark.parametrize("older", [True, False])
def test_a_model_dir_from_before_segments_resumes_mid_epoch_saying_so(
  tmp_path, cache_dir, older
):
  """Its position (records consumed) is understood; the rest of its epoch is
  read in the segment order, and the run says so. Control: a model dir
  that recorded the segment order resumes without a word."""
  config = _nan_config("error", tmp_path / "run", cache_dir).replace(epochs=1)
  trainer = train_lib.Trainer(config)
  assert trainer.run()["step"] == 16
  trainer = train_lib.Trainer(config.replace(epochs=2))
  trainer.checkpoints.restore_latest()
  trainer.state.step_in_epoch.assign(8)  # As a kill mid-epoch 1 leaves it.
  trainer.state.step.assign(24)
  trainer.checkpoints.save(24)
  if older:
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    del recorded["resolved"]["input_order"]
    (tmp_path / "run" / "config.json").write_text(json.dumps(recorded))
  with trainer_warnings() as warnings:
    summary = train_lib.Trainer(config.replace(epochs=2)).run()
  assert summary["step"] == 32
  said = [
    w
    for w in warnings
    if "read epoch 2 in one shuffle over the whole epoch (an older version);"
    " the rest of it is read in segments of 1 file " in w
  ]
  assert bool(said) == older, warnings
