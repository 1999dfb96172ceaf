"""*When*, over the whole trainer: resume or start, the epochs, evaluation,
checkpoints, preemption, early stopping, a NaN rollback, the end - and the
crash points where the trainer's durable state changes (trainer/faults.py).
How one call of steps runs is trainer.loop.step's; when a call ends within
an epoch, trainer.loop.clock's."""

import signal
import threading
import time

import numpy as np
import tensorflow as tf

from trainer import data
from trainer import errors
from trainer import faults
from trainer import hypertune
from trainer import metrics
from trainer import optimization
from trainer import plots
from trainer import shards
from trainer.errors import TrainingError
from trainer.errors import Unanswered
from trainer.errors import UserError
from trainer.errors import describe
from trainer.logs import log
from trainer.loop import epoch_end
from trainer.loop import finish
from trainer.loop import progress
from trainer.loop import recovery
from trainer.loop import resume
from trainer.loop import state as state_lib


class SignalWatcher:
  """Turns SIGTERM into a flag the loop checks between calls."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    # Signal handlers can only be installed from the main thread (a notebook
    # or test may call train() from another); there SIGTERM keeps its default.
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class Controller:
  """Runs a built run (a Trainer) to its end."""

  def __init__(self, trainer):
    self.trainer = trainer
    self.recovery = recovery.Recovery(
      trainer.config, trainer.state, trainer.optimizer, trainer.checkpoints
    )
    # Training totals since the last step-level TensorBoard point (chief).
    self._pending_log = None

  def run(self):
    """Trains to the end (or early stop / preemption). Returns a summary.

    Raises:
      TrainingError: bad input data (naming what and where) or a NaN loss.
    """
    try:
      return self._run()
    except tf.errors.InvalidArgumentError as e:
      label_problem = data.label_error(e)
      if label_problem:
        raise TrainingError(label_problem) from None
      if "IteratorGetNext" in str(e):  # Raised by the input pipeline.
        raise TrainingError(
          f"bad input data: {describe(e)}; --skip_corrupt "
          "skips undecodable records"
        ) from None
      raise TrainingError(
        f"{describe(e)} (TensorFlow, in the training step "
        f"of --model={self.trainer.config.model} at --image_size="
        f"{self.trainer.image_size})"
      ) from None
    except tf.errors.DataLossError as e:
      trainer = self.trainer
      named = [("train_data", trainer.train_spec.files)]
      if trainer.eval_spec:
        named.append(("eval_data", trainer.eval_spec.files))
      raise TrainingError(shards.damaged_data_message(e, named)) from None
    except tf.errors.OpError as e:
      if errors.unanswered(e):
        raise Unanswered(errors.unanswered_message(e)) from None
      raise

  def _run(self):
    trainer, config, state = (
      self.trainer,
      self.trainer.config,
      self.trainer.state,
    )
    # Read before anything here writes it; the chief's reading decides for
    # every worker (the others would race its overwrite).
    previous_status = trainer.writer.read_status() if trainer.is_chief else None
    resume.check_resumable(trainer)
    restored = trainer.checkpoints.restore_latest()
    # Every worker has looked for a checkpoint before any writes one, and
    # all found the same: else they would train different epochs and hang.
    if trainer.any_worker(restored) and trainer.any_worker(not restored):
      raise UserError(
        f"the workers disagree on whether {trainer.run_dir.checkpoints}"
        " holds a checkpoint: --model_dir must be storage every "
        "worker reads (gs:// across machines)"
      )
    if restored:
      log.info(
        f"Resumed from {restored}: epoch {int(state.epoch.numpy())}, step "
        f"{int(state.step.numpy())}."
      )
    finished = resume.finished_already(trainer, previous_status)
    if finished:
      return finished
    if restored:
      resume.note_other_input_order(trainer)
    # Before any checkpoint: what a resume must match is on record first.
    trainer.writer.write_config(
      config,
      trainer.class_names,
      {
        "precision": trainer.precision,
        "input_order": data.input_order(trainer.train_spec),
      },
    )
    if not restored:
      # Keras starts the averages at zero: a rollback to the step-0
      # checkpoint must bring back the weights, not zeros.
      trainer.averaged_weights.start_from_weights()
      # A step-0 checkpoint: something to roll back to if the loss blows up.
      trainer.checkpoints.save(0)
      if trainer.is_chief:
        trainer.writer.write_input_images(trainer.sample_inputs())
    trainer.writer.write_status("running", state)
    log.info(
      f"Training {trainer.steps_per_epoch} steps/epoch for up to "
      f"{config.epochs} epochs; the first step compiles, may be slow."
    )
    status = "completed"
    with SignalWatcher() as sigterm:
      while int(state.epoch.numpy()) < config.epochs:
        if not self._run_epoch(sigterm):
          status = "preempted"
          break
        stop = epoch_end.should_stop_early(config, state)
        faults.point("early_stop:decided")
        if stop:
          status = "early_stopped"
          break
    return finish.finish(trainer, status)

  def _run_epoch(self, sigterm):
    """One epoch (or its remainder). Returns False if preempted."""
    trainer, config, state, clock = (
      self.trainer,
      self.trainer.config,
      self.trainer.state,
      self.trainer.clock,
    )
    epoch = int(state.epoch.numpy())
    iterator = trainer.train_iterator(epoch, state.position_in_epoch())
    bar = progress.Progress(
      trainer.steps_per_epoch, epoch, config.epochs, trainer.is_chief
    )
    totals = state.epoch_totals.numpy().copy()  # Zero unless resumed.
    start, images_done = time.time(), 0
    while int(state.step_in_epoch.numpy()) < trainer.steps_per_epoch:
      step = int(state.step.numpy())
      num_steps = clock.steps_this_call(step, int(state.step_in_epoch.numpy()))
      votes = state_lib.requests_vector(
        stop=sigterm.requested, save=clock.time_to_save()
      )
      # The optimizer's own count before the call: what a rollback restores
      # (under float16 it excludes overflow-skipped steps, so the run's step
      # is not it).
      counter = int(optimization.step_counter(trainer.optimizer).numpy())
      faults.plant_nan(step, trainer.model)
      clock.before_call(step)
      call_totals, step_losses, agreed, weights_finite = trainer.train_steps(
        iterator, tf.constant(num_steps), votes
      )
      profiled = clock.after_call(step + num_steps)
      if profiled:
        log.info(profiled)
      if self.recovery.rolled_back(
        step, step_losses.numpy(), bool(weights_finite), counter
      ):
        state.rolled_back_steps_in_epoch.assign_add(num_steps)
        continue
      state.step.assign_add(num_steps)
      state.step_in_epoch.assign_add(num_steps)
      call_totals = call_totals.numpy()
      totals += call_totals
      state.epoch_totals.assign(totals)
      self._log_steps(int(state.step.numpy()), num_steps, call_totals)
      images_done += num_steps * config.global_batch_size
      summary = metrics.summarize(totals, config.num_classes, with_skipped=True)
      bar.update(
        int(state.step_in_epoch.numpy()),
        summary["loss"],
        summary["accuracy"],
        images_done / (time.time() - start),
      )
      requests = state_lib.agreed_requests(agreed)
      if clock.checkpoint_due(int(state.step.numpy()), requests):
        trainer.checkpoints.save(int(state.step.numpy()))
      if requests["stop"]:
        trainer.writer.write_status("preempted", state)
        log.info(
          f"Preempted (SIGTERM): saved step {int(state.step.numpy())}; run the "
          "same command to resume."
        )
        return False
    elapsed = time.time() - start
    train_figures = metrics.summarize(
      totals, config.num_classes, with_skipped=True
    )
    val_figures = trainer.evaluate()
    self._end_epoch(train_figures, val_figures, images_done / elapsed)
    return True

  def _log_steps(self, step, num_steps, call_totals):
    """Step-level TensorBoard points (chief): the mean training figures of
    the steps since the last point and the rate of the last update, from
    totals the call already returned (no extra device round trip)."""
    trainer = self.trainer
    if not trainer.is_chief:
      return
    if self._pending_log is None:
      self._pending_log = [np.zeros(trainer.step.stats_layout.size), 0]
    self._pending_log[0] += call_totals
    self._pending_log[1] += num_steps
    if not trainer.clock.time_to_log(step):
      return
    figures = metrics.summarize(
      self._pending_log[0], trainer.config.num_classes, with_skipped=True
    )
    figures["learning_rate"] = optimization.last_update_rate(
      trainer.schedule, trainer.optimizer
    )
    trainer.writer.write_step_figures(step, figures)
    self._pending_log = None

  def _end_epoch(self, train_figures, val_figures, images_per_sec):
    trainer, config, state = (
      self.trainer,
      self.trainer.config,
      self.trainer.state,
    )
    record = epoch_end.epoch_record(
      config,
      state,
      trainer.schedule,
      trainer.optimizer,
      train_figures,
      val_figures,
      images_per_sec,
    )
    epoch_end.update_early_stopping(config, state, record)
    new_best = epoch_end.update_best_metric(
      config, state, record, has_validation=trainer.eval_spec is not None
    )
    if config.lr_schedule == "plateau":
      epoch_end.update_plateau(config, state, record)
    epoch_end.start_next_epoch(state)
    # The latest checkpoint last: a run killed before it trains this epoch
    # again and rewrites what the epoch wrote (best/, its metrics line)
    # with the same values; after it, both are already there. So no latest
    # checkpoint has a best value that no best/ checkpoint holds, or an
    # epoch missing from metrics.jsonl.
    faults.point("epoch_end:before")
    if new_best:
      # best/ holds the averaged weights as the model's (what the export and
      # trainer.evaluate read); the raw ones sit in its optimizer's slots.
      with trainer.averaged_weights.swapped_in():
        trainer.checkpoints.save_best(int(state.step.numpy()))
    trainer.writer.append_metrics(record)
    faults.point("metrics:after")
    trainer.checkpoints.save(int(state.step.numpy()))
    faults.point("epoch_checkpoint:after")
    if trainer.is_chief:
      hypertune.report(config.hypertune_metric, record)
      log.info(progress.epoch_line(record, config.epochs))
      plots.plot_run(trainer.model_dir)  # Curves so far; cheap, per epoch.
