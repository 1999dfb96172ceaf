"""An epoch's record (its metrics.jsonl line) and what it decides, from
figures every worker computes identically: the early-stopping history, the
best epoch by --best_metric, the 'plateau' schedule's rate. Each decision
lives in the run's TrainState, so a resumed run re-derives it."""

import tensorflow as tf

from trainer import optimization
from trainer.logs import log


def signed(metric, value):
  """`value` of a metrics.jsonl field, signed so that lower is better (and
  back: the sign is its own inverse)."""
  return float(value) if "loss" in metric else -float(value)


def epoch_record(
  config, state, schedule, optimizer, train_figures, val_figures, speed
):
  """The epoch's metrics.jsonl line (`speed`: images/s)."""
  record = {
    "epoch": int(state.epoch.numpy()) + 1,
    "step": int(state.step.numpy()),
    "loss": train_figures["loss"],
    "accuracy": train_figures["accuracy"],
    "learning_rate": optimization.last_update_rate(schedule, optimizer),
    "images_per_sec": speed,
  }
  for key in ("auc", "top5_accuracy"):
    if key in train_figures:
      record[key] = train_figures[key]
  if config.skip_corrupt:
    record["skipped"] = train_figures["skipped"]
  for key in ("loss", "accuracy", "auc", "top5_accuracy", "skipped"):
    if key in val_figures:
      record[f"val_{key}"] = val_figures[key]
  return record


def update_early_stopping(config, state, record):
  """--early_stopping_monitor's best so far, and the epochs since."""
  monitor = record.get(config.early_stopping_monitor, record["loss"])
  sign = -1.0 if config.early_stopping_monitor == "val_accuracy" else 1.0
  if sign * monitor < float(state.best_monitor.numpy()):
    state.best_monitor.assign(sign * monitor)
    state.epochs_without_improvement.assign(0)
  else:
    state.epochs_without_improvement.assign_add(1)
  if "val_accuracy" in record and (
    record["val_accuracy"] > float(state.best_val_accuracy.numpy())
  ):
    state.best_val_accuracy.assign(record["val_accuracy"])


def update_best_metric(config, state, record, has_validation):
  """True if this epoch is --best_metric's best so far (then best/ keeps
  it). Without validation data the default val_accuracy keeps the latest."""
  name = config.best_metric
  if name not in record:
    return not has_validation
  value = signed(name, record[name])
  if value < float(state.best_metric_value.numpy()):
    state.best_metric_value.assign(value)
    return True
  return False


def update_plateau(config, state, record):
  """The 'plateau' schedule's epoch-end decision: divide the rate by 10
  after --plateau_patience epochs without an improvement of
  --plateau_monitor by more than --plateau_min_delta. Every worker takes
  it from the same all-reduced figures, so all agree."""
  value = signed(config.plateau_monitor, record[config.plateau_monitor])
  if value < float(state.plateau_best.numpy()) - config.plateau_min_delta:
    state.plateau_best.assign(value)
    state.plateau_epochs_without_improvement.assign(0)
    return
  state.plateau_epochs_without_improvement.assign_add(1)
  if (
    int(state.plateau_epochs_without_improvement.numpy())
    >= config.plateau_patience
  ):
    state.plateau_factor.assign(float(state.plateau_factor.numpy()) * 0.1)
    state.plateau_epochs_without_improvement.assign(0)
    log.info(
      f"Plateau: {config.plateau_monitor} has not improved for "
      f"{config.plateau_patience} epochs; learning rate x"
      f"{float(state.plateau_factor.numpy()):g} of --learning_rate."
    )


def patience_exhausted(config, state):
  patience = config.early_stopping_patience
  return bool(patience) and (
    int(state.epochs_without_improvement.numpy()) >= patience
  )


def should_stop_early(config, state):
  if patience_exhausted(config, state):
    log.info(
      f"Early stopping: {config.early_stopping_monitor} has not "
      f"improved for {config.early_stopping_patience} epochs."
    )
    return True
  return False


def start_next_epoch(state):
  """The epoch's counters move on; its running totals start again."""
  state.epoch.assign_add(1)
  state.step_in_epoch.assign(0)
  state.rolled_back_steps_in_epoch.assign(0)
  state.epoch_totals.assign(tf.zeros_like(state.epoch_totals))
