"""A call that left a NaN/Inf loss, weights or optimizer state: stop with
the step (--nan_policy=error), or roll back to the last checkpoint with half
the learning rate (--nan_policy=rollback), at most --max_rollbacks times."""

import numpy as np

from trainer import faults
from trainer import optimization
from trainer.errors import TrainingError
from trainer.logs import log

# What a rollback keeps of the run's state: the step counter, the data
# position (the batches that blew up are skipped, and the input position
# records them), the early-stopping and plateau history.
KEPT_ON_ROLLBACK = (
  "step",
  "epoch",
  "step_in_epoch",
  "rollbacks",
  "best_val_accuracy",
  "best_monitor",
  "epochs_without_improvement",
  "best_metric_value",
  "plateau_factor",
  "plateau_best",
  "plateau_epochs_without_improvement",
  "epoch_totals",
  "rolled_back_steps_in_epoch",
)


class Recovery:
  """Checks each call's results and recovers per --nan_policy."""

  def __init__(self, config, state, optimizer, checkpoints):
    self.config = config
    self.state = state
    self.optimizer = optimizer
    self.checkpoints = checkpoints

  def rolled_back(self, step, step_losses, weights_finite, counter):
    """False if the call that started at `step` (the optimizer's count then:
    `counter`) left everything finite; else raises or rolls back
    (--nan_policy) and returns True."""
    if not np.all(np.isfinite(step_losses)):
      bad_step = step + int(np.argmin(np.isfinite(step_losses))) + 1
      self.recover(f"loss became NaN/Inf at step {bad_step}", counter)
      return True
    if not weights_finite:
      bad_step = step + len(step_losses)
      self.recover(
        f"weights or optimizer state became NaN/Inf at step {bad_step}", counter
      )
      return True
    return False

  def recover(self, what, counter):
    """Raises, or rolls back to the last checkpoint with a lower rate.

    Weights, optimizer slots and dropout state come from the checkpoint;
    KEPT_ON_ROLLBACK is kept. The schedule's position is the optimizer's
    count before the failed call (`counter`), as if those batches had been
    skipped, so the rate used and the rate logged agree - and under float16
    the count keeps excluding overflow-skipped steps.
    """
    config, state = self.config, self.state
    if config.nan_policy == "error":
      raise TrainingError(
        f"{what}; lower --learning_rate or use --nan_policy=rollback"
      )
    if int(state.rollbacks.numpy()) >= config.max_rollbacks:
      raise TrainingError(
        f"{what} after {int(state.rollbacks.numpy())} "
        "rollbacks (--max_rollbacks)"
      )
    kept = {k: getattr(state, k).numpy() for k in KEPT_ON_ROLLBACK}
    multiplier = float(state.lr_multiplier.numpy())
    restored = self.checkpoints.restore_latest()
    if not restored:
      raise TrainingError(f"{what} and there is no checkpoint to roll back to")
    for name, value in kept.items():
      getattr(state, name).assign(value)
    optimization.step_counter(self.optimizer).assign(counter)
    state.rollbacks.assign_add(1)
    state.lr_multiplier.assign(multiplier * 0.5)
    log.info(
      f"{what[0].upper()}{what[1:]}: rolled back to {restored}, "
      f"learning rate x{multiplier * 0.5:g} (rollback "
      f"{int(state.rollbacks.numpy())}/{config.max_rollbacks})."
    )
    faults.point("rollback:after")
