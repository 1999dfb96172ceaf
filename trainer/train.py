"""The training loop: `train(config)` is the one entry tests, notebooks and
the CLI call.

Data flows one way: config -> strategy -> (inside its scope) model, optimizer,
datasets -> a custom loop (`strategy.run` inside a `tf.function` that runs
several steps per call) -> outputs in the model dir. Keras `fit` is not used:
it fails under MultiWorkerMirroredStrategy with Keras 3.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import tempfile
import threading
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from trainer import augment
from trainer import config as config_lib
from trainer import data
from trainer import evaluation
from trainer import faults
from trainer import hypertune
from trainer import metrics
from trainer import model as model_lib
from trainer import optimization
from trainer import outputs
from trainer import plots
from trainer import records
from trainer import serving
from trainer import strategy as strategy_lib
from trainer import warm_start
from trainer.config import profile_range
from trainer.errors import UserError
from trainer.errors import describe

log = outputs.log

# What every worker votes on at the end of each call of steps (any worker's
# vote wins): stop (SIGTERM) and save (--checkpoint_every_secs).
REQUESTS = ("stop", "save")


def requests_vector(**votes):
  """The vector `Trainer.train_steps` takes; names not given vote no."""
  unknown = set(votes) - set(REQUESTS)
  if unknown:
    raise ValueError(f"Unknown requests {sorted(unknown)}; expected {REQUESTS}")
  return tf.constant([float(bool(votes.get(name))) for name in REQUESTS])


def agreed_requests(summed):
  """{request: bool} from the vector the workers' votes were summed into."""
  return {name: float(v) > 0 for name, v in zip(REQUESTS, summed.numpy())}


class TrainingError(UserError):
  """Training cannot go on (NaN loss, bad data); the message says where."""


class _SignalWatcher:
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


def _check_writable(directory, name):
  try:
    tf.io.gfile.makedirs(directory)
    probe = os.path.join(directory, f".write-test-{os.getpid()}")
    with tf.io.gfile.GFile(probe, "w") as f:
      f.write("ok")
    tf.io.gfile.remove(probe)
  except (tf.errors.OpError, OSError) as e:
    raise UserError(
      f"{name}={directory}: not writable ({describe(e)})"
    ) from None


class _TrainState:
  """Progress that must survive a restart, as checkpointed variables."""

  def __init__(self, stats_size):
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.best_val_accuracy = tf.Variable(
      -1.0, dtype=tf.float64, trainable=False
    )
    self.best_monitor = tf.Variable(np.inf, dtype=tf.float64, trainable=False)
    self.epochs_without_improvement = tf.Variable(
      0, dtype=tf.int64, trainable=False
    )
    self.lr_multiplier = tf.Variable(1.0, dtype=tf.float32, trainable=False)
    self.rollbacks = tf.Variable(0, dtype=tf.int64, trainable=False)
    # --best_metric's best value so far, signed so that lower is better.
    self.best_metric_value = tf.Variable(
      np.inf, dtype=tf.float64, trainable=False
    )
    # The 'plateau' schedule: the rate's factor and --plateau_monitor's
    # history, decided from figures every worker computes identically.
    self.plateau_factor = tf.Variable(1.0, dtype=tf.float32, trainable=False)
    self.plateau_best = tf.Variable(np.inf, dtype=tf.float64, trainable=False)
    self.plateau_epochs_without_improvement = tf.Variable(
      0, dtype=tf.int64, trainable=False
    )
    # Steps' worth of this epoch's input that rollbacks consumed without
    # training on them: the input resumes after them, so a resumed run reads
    # the batches the uninterrupted one reads.
    self.rolled_back_steps_in_epoch = tf.Variable(
      0, dtype=tf.int64, trainable=False
    )
    # The current epoch's summed training statistics so far: a run resumed
    # mid-epoch reports (and early-stops on) the whole epoch, not only the
    # steps after the restart.
    self.epoch_totals = tf.Variable(
      tf.zeros([stats_size], tf.float64), trainable=False
    )

  def trackables(self):
    return {k: v for k, v in vars(self).items()}


class LoopClock:
  """Decides *when*: how many steps the next call runs, when the profiler
  starts and stops, and when a checkpoint is due. Knows nothing of how a
  step runs (that is the Trainer's)."""

  def __init__(
    self, config, steps_per_call, steps_per_epoch, profile_dir, is_chief
  ):
    self.config = config
    self.steps_per_call = steps_per_call
    self.steps_per_epoch = steps_per_epoch
    self.profile_dir = profile_dir
    self.is_chief = is_chief
    self.profile_span = profile_range(config)
    self._profiling = False
    self._last_save = time.time()

  def steps_this_call(self, step, step_in_epoch):
    """Up to --steps_per_call, landing exactly on the epoch's end, the
    profiled range's ends and --checkpoint_every_steps boundaries."""
    steps = min(self.steps_per_call, self.steps_per_epoch - step_in_epoch)
    for boundary in self.profile_span or ():
      if step < boundary:
        steps = min(steps, boundary - step)
    for every in (
      self.config.checkpoint_every_steps,
      self.config.log_every_steps,
    ):
      if every:
        steps = min(steps, every - step % every)
    return steps

  def time_to_log(self, step):
    """--log_every_steps: a step-level TensorBoard point is due after `step`
    (0: after every call)."""
    every = self.config.log_every_steps
    return not every or step % every == 0

  def time_to_save(self):
    """--checkpoint_every_secs has passed since the last save (this worker's
    vote; the workers agree in the call)."""
    every = self.config.checkpoint_every_secs
    return bool(every) and time.time() - self._last_save >= every

  def checkpoint_due(self, step, requests):
    every = self.config.checkpoint_every_steps
    due = (
      requests["save"] or requests["stop"] or bool(every and step % every == 0)
    )
    if due:
      self._last_save = time.time()
    return due

  def before_call(self, step):
    """Starts the profiler at the first profiled step (chief only)."""
    if self.profile_span and self.is_chief and step == self.profile_span[0]:
      tf.profiler.experimental.start(self.profile_dir)
      self._profiling = True

  def after_call(self, step):
    """Stops it once the last profiled step ran; returns a line to say so."""
    if self._profiling and step >= self.profile_span[1]:
      tf.profiler.experimental.stop()
      self._profiling = False
      first, last = self.profile_span
      return f"Wrote a profile of steps {first}-{last} to {self.profile_dir}."
    return None


class Trainer:
  """Owns the strategy, model, optimizer and checkpoints; knows how a call of
  training steps runs (`train_steps`). Reads as: setup (__init__), the
  outer loop (run, _run_epoch), the step (compute_gradients,
  apply_gradients, train_steps)."""

  def __init__(self, config, config_name="custom"):
    self.config = config
    self.run_dir = outputs.RunDir.for_training(config.model_dir, config_name)
    self.model_dir = self.run_dir.root
    self.runtime = strategy_lib.set_up(
      config,
      remote_tpu_paths={
        "--train_data": config.train_data,
        "--eval_data": config.eval_data,
        "--model_dir": self.model_dir,
      },
    )
    self.info = self.runtime.info
    self.strategy = self.info.strategy
    self.per_replica_batch_size = self.runtime.per_replica_batch_size
    self.precision = self.runtime.precision
    self.all_reduce_dtype = self.runtime.all_reduce_dtype
    self.image_size = self.runtime.image_size
    # TPUs pay a host round trip per call: run many steps in each.
    self.steps_per_call = config.steps_per_call or (
      100 if self.info.name == "tpu" else 10
    )
    self.is_chief = self.info.is_chief
    if self.is_chief:
      for directory, name in (
        (self.run_dir.root, "--model_dir"),
        (self.run_dir.checkpoint_root, "$AIP_CHECKPOINT_DIR"),
        (self.run_dir.log_dir, "$AIP_TENSORBOARD_LOG_DIR"),
      ):
        _check_writable(directory, name)
    outputs.report_to_stdout(self.is_chief)
    log.info(
      self.runtime.banner(config.global_batch_size), extra=outputs.EVERY_WORKER
    )
    if config.deterministic:
      tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)

    self.train_spec, self.eval_spec = data.resolve_input_specs(
      config,
      self.image_size,
      counts_path=self.run_dir.example_counts,
      remember_counts=self.is_chief,
    )
    self.class_names = data.class_names(
      self.train_spec.files, config.num_classes
    )
    for flag in ("early_stopping_monitor", "hypertune_metric"):
      metric = getattr(config, flag)
      if metric.startswith("val_") and not self.eval_spec:
        raise UserError(
          f"--{flag}={metric} needs validation data "
          "(--eval_data); without it, use a training metric"
        )
    # --best_metric's default keeps its old fallback (best = latest).
    if (
      config.best_metric.startswith("val_")
      and not self.eval_spec
      and config.best_metric != "val_accuracy"
    ):
      raise UserError(
        f"--best_metric={config.best_metric} needs validation "
        "data (--eval_data); without it, use a training metric"
      )
    if (
      config.lr_schedule == "plateau"
      and not self.eval_spec
      and config.plateau_monitor.startswith("val_")
    ):
      raise UserError(
        f"--plateau_monitor={config.plateau_monitor} needs "
        "validation data (--eval_data); without it, use "
        "--plateau_monitor=loss"
      )
    if config.data_service:
      # One job per run and epoch, shared by all workers of this run.
      run_id = hashlib.sha1(self.model_dir.encode()).hexdigest()[:10]
      self.train_spec = dataclasses.replace(
        self.train_spec,
        job_name=f"alexnet-{run_id}",
        data_service=strategy_lib.data_service_address(config.data_service),
      )
      log.info(
        f"Input through the tf.data service at {self.train_spec.data_service}"
      )
    self.train_spec = data.for_strategy(self.train_spec, self.info.name)
    if self.eval_spec:
      self.eval_spec = data.for_strategy(self.eval_spec, self.info.name)
    self.steps_per_epoch = config.steps_per_epoch or (
      self.train_spec.num_examples // config.global_batch_size
    )
    if self.steps_per_epoch < 1:
      raise UserError(
        f"{self.train_spec.num_examples} training examples are "
        f"fewer than --global_batch_size="
        f"{config.global_batch_size}"
      )
    self.num_pipelines = self.info.num_input_pipelines
    # Read outside the scope: the source model's variables are not mirrored.
    warm_start_source = warm_start.read_source(config, self.run_dir)

    with self.strategy.scope():
      try:
        self.model = model_lib.build_model(
          config.model,
          config.num_classes,
          self.image_size,
          config.dropout_rate,
          sync_batch_norm=self.info.num_replicas > 1,
          batch_norm_momentum=config.batch_norm_momentum,
          fused_batch_norm=config.batch_norm == "fused",
        )
      except ValueError as e:
        raise UserError(f"--model={config.model}: {e}") from None
      warm_start.prepare_model(self.model, config, warm_start_source)
      self.state = _TrainState(
        metrics.StatsLayout(config.num_classes, with_skipped=True).size
      )
      self.schedule = optimization.EpochSchedule(
        config.lr_schedule,
        config.learning_rate,
        self.steps_per_epoch,
        config.epochs,
        config.lr_constant_epochs,
        config.warmup_epochs,
        self.state.lr_multiplier,
        boundaries=config_lib.lr_boundaries(config),
        plateau_factor=self.state.plateau_factor,
      )
      self.optimizer = optimization.build_optimizer(
        config,
        self.schedule,
        loss_scaling=self.precision == "mixed_float16",
        fused=self.info.name != "tpu",
        all_reduce_dtype=self.all_reduce_dtype,
      )
      # Create optimizer slots now so checkpoints restore into them.
      self.optimizer.build(self.model.trainable_variables)
    # --ema_decay: validation, best/ and the export see the averaged weights.
    self.averaged_weights = optimization.AveragedWeights(
      self.strategy, self.optimizer, self.model.trainable_variables
    )
    # Dropout's random-seed state is a model variable but not a weight; it
    # must be saved too, or a resumed run draws different masks.
    weight_ids = {id(w) for w in self.model.weights}
    rng_states = [v for v in self.model.variables if id(v) not in weight_ids]
    self.checkpoint = tf.train.Checkpoint(
      model=self.model,
      optimizer=self.optimizer,
      rng_states=rng_states,
      **self.state.trackables(),
    )
    self.checkpoints = outputs.CheckpointSet(
      self.checkpoint,
      self.run_dir,
      self.is_chief,
      self.info.task,
      max_to_keep=config.keep_checkpoints,
    )
    self.writer = outputs.RunWriter(self.run_dir, self.is_chief)
    self.clock = LoopClock(
      config,
      self.steps_per_call,
      self.steps_per_epoch,
      self.run_dir.profile,
      self.is_chief,
    )
    # Training totals since the last step-level TensorBoard point (chief).
    self._pending_log = None
    # Training statistics carry the count of records --skip_corrupt dropped.
    self.stats_layout = metrics.StatsLayout(
      config.num_classes, with_skipped=True
    )
    self.train_steps = self._make_train_call()
    self._eval_call = evaluation.make_eval_call(
      self.strategy, self.model, config.num_classes
    )

  # --------------------------------------------------------------------------
  # Compiled steps.

  def compute_gradients(self, images, labels):
    """This replica's share of the step: (probabilities, per-example loss,
    gradients of the global-batch mean loss, loss-scaled under float16).
    `labels`: integer labels or soft targets (metrics.loss_per_example)."""
    config, model, optimizer = self.config, self.model, self.optimizer
    with tf.GradientTape() as tape:
      probabilities = model(images, training=True)
      per_example = metrics.loss_per_example(
        labels, probabilities, config.num_classes
      )
      # Average over the global batch: gradients are summed across replicas.
      loss = tf.nn.compute_average_loss(
        per_example, global_batch_size=config.global_batch_size
      )
      if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        loss = optimizer.scale_loss(loss)
    return (
      probabilities,
      per_example,
      tape.gradient(loss, model.trainable_variables),
    )

  def apply_gradients(self, gradients):
    """Sums `gradients` across replicas and updates the weights (replica
    context); under loss scaling every replica and worker takes one shared
    decision to apply or skip."""
    self.optimizer.apply_gradients(
      zip(gradients, self.model.trainable_variables)
    )

  def train_step(self, images, labels, skipped, step=None):
    """One replica's step (what TPUs compile with XLA): returns its batch
    statistics, laid out by `stats_layout`, to be summed over replicas.
    `step`: the global step this batch trains (seeds mixup/cutmix); None =
    the loop's current step."""
    step = self.state.step if step is None else step
    images, targets, labels = augment.training_batch(
      images, labels, self.config, step
    )
    probabilities, per_example, gradients = self.compute_gradients(
      images, targets
    )
    self.apply_gradients(gradients)
    return metrics.batch_stats(
      labels,
      probabilities,
      per_example,
      self.config.num_classes,
      skipped=skipped,
    )

  def _make_train_call(self):
    size = self.stats_layout.size
    strategy = self.strategy
    # What a checkpoint saves and must never hold as NaN/Inf: the weights
    # and every floating-point optimizer variable (an Adam second moment can
    # overflow while the weights are still finite).
    checked = [
      *self.model.weights,
      *(
        v for v in self.optimizer.variables if tf.as_dtype(v.dtype).is_floating
      ),
    ]

    @tf.function
    def train_call(iterator, num_steps, control):
      totals = tf.zeros([size], tf.float32)
      step_losses = tf.TensorArray(tf.float32, size=num_steps)
      for i in tf.range(num_steps):
        images, labels, skipped = next(iterator)
        step = self.state.step + tf.cast(i, tf.int64)
        stats = strategy.reduce(
          "SUM",
          strategy.run(self.train_step, args=(images, labels, skipped, step)),
          axis=None,
        )
        totals += stats
        sums = stats[
          self.stats_layout.slices["sums"]
        ]  # loss sum, correct, count
        step_losses = step_losses.write(i, sums[0] / sums[2])
      # Agree on stop/save across workers: any worker's request counts.
      agreed = strategy.reduce(
        "SUM", strategy.run(lambda: tf.identity(control)), axis=None
      )
      # The last update can break the weights or the optimizer's state
      # while every loss was finite: such state must never reach a
      # checkpoint. Each replica checks its own copy on its device; all
      # agree on the answer.
      broken = strategy.reduce(
        "SUM",
        strategy.run(
          lambda: tf.cast(
            tf.logical_not(
              tf.reduce_all(
                [
                  tf.reduce_all(tf.math.is_finite(tf.cast(w, tf.float32)))
                  for w in checked
                ]
              )
            ),
            tf.float32,
          )
        ),
        axis=None,
      )
      return totals, step_losses.stack(), agreed, tf.equal(broken, 0.0)

    return train_call

  # --------------------------------------------------------------------------
  # Loop.

  def evaluate(self):
    """Exact metrics over the whole eval set, or {} if there is none."""
    if self.eval_spec is None:
      return {}
    with self.averaged_weights.swapped_in():
      return evaluation.evaluate(
        self.strategy,
        self.num_pipelines,
        self._eval_call,
        self.eval_spec,
        self.config.global_batch_size,
      )

  def train_iterator(self, epoch, step_in_epoch):
    records_per_step = self.config.global_batch_size // self.num_pipelines
    skip = step_in_epoch * records_per_step
    if skip:  # Finding the place takes the files' record counts.
      self.train_spec = data.with_file_counts(
        self.train_spec, self.run_dir.example_counts, self.is_chief
      )
    dataset = strategy_lib.distribute_datasets(
      self.strategy,
      lambda ctx: data.make_train_dataset(
        self.train_spec, ctx, self.config.global_batch_size, epoch, skip
      ),
    )
    return iter(dataset)

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
        f"of --model={self.config.model} at --image_size="
        f"{self.image_size})"
      ) from None
    except tf.errors.DataLossError as e:
      raise TrainingError(
        f"corrupt TFRecord data in --train_data/--eval_data "
        f"({describe(e)}); --skip_corrupt skips bad "
        "records"
      ) from None

  def _any_worker(self, flag):
    """True on every worker if `flag` is true on any (a collective: also a
    barrier, which every worker must reach)."""
    if not hasattr(self, "_any_worker_call"):
      strategy = self.strategy
      self._any_worker_call = tf.function(
        lambda x: strategy.reduce(
          "SUM", strategy.run(tf.identity, args=(x,)), axis=None
        )
      )
    return float(self._any_worker_call(tf.constant(float(bool(flag))))) > 0

  def _run(self):
    config, state = self.config, self.state
    # Read before anything here writes it; the chief's reading decides for
    # every worker (the others would race its overwrite).
    previous_status = self.writer.read_status() if self.is_chief else None
    self._check_resumable()
    restored = self.checkpoints.restore_latest()
    # Every worker has looked for a checkpoint before any writes one, and
    # all found the same: else they would train different epochs and hang.
    if self._any_worker(restored) and self._any_worker(not restored):
      raise UserError(
        f"the workers disagree on whether {self.run_dir.checkpoints}"
        " holds a checkpoint: --model_dir must be storage every "
        "worker reads (gs:// across machines)"
      )
    if restored:
      log.info(
        f"Resumed from {restored}: epoch {int(state.epoch.numpy())}, step "
        f"{int(state.step.numpy())}."
      )
    # A completed run trains on when asked for more epochs; an early-stopped
    # one stays stopped (re-running its command must not train again).
    # The early-stop decision is re-derived from the restored state too: a
    # run killed after its last checkpoint but before status.json said so
    # stays stopped.
    early_stopped = (
      previous_status == "early_stopped" or self._patience_exhausted()
    )
    finished = self._any_worker(
      int(state.epoch.numpy()) >= config.epochs or early_stopped
    )
    if finished:
      previous_status = (
        previous_status
        if previous_status in ("completed", "early_stopped")
        else ("early_stopped" if early_stopped else "completed")
      )
      # A run killed while exporting left no whole export: finish it.
      if self.config.export and self._any_worker(
        self.is_chief and not self.run_dir.export_is_whole()
      ):
        log.info(
          f"This model dir finished training ({int(state.epoch.numpy())}"
          " epochs) but holds no whole export: exporting it now."
        )
        return self._finish(previous_status)
      log.info(
        f"Nothing to train: this model dir already finished "
        f"({int(state.epoch.numpy())} epochs, {previous_status or 'completed'}"
        "). Use a new --model_dir to retrain."
      )
      return self._finish(previous_status or "completed", export=False)
    if restored:
      self._note_older_input_order()
    # Before any checkpoint: what a resume must match is on record first.
    self.writer.write_config(
      config,
      self.class_names,
      {"precision": self.precision, "input_order": data.INPUT_ORDER},
    )
    if not restored:
      # Keras starts the averages at zero: a rollback to the step-0
      # checkpoint must bring back the weights, not zeros.
      self.averaged_weights.start_from_weights()
      # A step-0 checkpoint: something to roll back to if the loss blows up.
      self.checkpoints.save(0)
      if self.is_chief:
        self.writer.write_input_images(self._sample_inputs())
    self.writer.write_status("running", state)
    log.info(
      f"Training {self.steps_per_epoch} steps/epoch for up to "
      f"{config.epochs} epochs; the first step compiles, may be slow."
    )
    status = "completed"
    with _SignalWatcher() as sigterm:
      while int(state.epoch.numpy()) < config.epochs:
        if not self._run_epoch(sigterm):
          status = "preempted"
          break
        stop = self._should_stop_early()
        faults.point("early_stop:decided")
        if stop:
          status = "early_stopped"
          break
    return self._finish(status)

  def _check_resumable(self):
    """Before restoring: one line if this model dir's checkpoints were
    written with options that lay out other variables, or in another
    precision. Every worker raises when any finds a conflict (`auto`
    resolves per machine), instead of the others waiting for it in the
    next collective."""
    conflict = None
    if tf.train.latest_checkpoint(
      self.run_dir.checkpoints
    ) and tf.io.gfile.exists(self.run_dir.config):
      conflict = config_lib.resume_conflict(
        config_lib.load(self.run_dir.config), self.config
      ) or (
        config_lib.precision_conflict(
          config_lib.load_resolved(self.run_dir.config).get("precision"),
          self.precision,
          self.config.precision,
        )
      )
    if self._any_worker(bool(conflict)):
      raise UserError(
        conflict
        or "another worker cannot resume this model dir's checkpoints "
        "(its error says why)"
      )

  def _note_older_input_order(self):
    """Says so when a model dir written with an older input order resumes
    mid-epoch: the rest of that epoch is read in the current order."""
    if not tf.io.gfile.exists(self.run_dir.config):
      return
    recorded = config_lib.load_resolved(self.run_dir.config).get("input_order")
    position = int(self.state.step_in_epoch.numpy()) + int(
      self.state.rolled_back_steps_in_epoch.numpy()
    )
    if recorded != data.INPUT_ORDER and position and self.is_chief:
      log.warning(
        f"This model dir predates the {data.INPUT_ORDER!r} input order: "
        f"the rest of epoch {int(self.state.epoch.numpy())} is read in the "
        "new order (some of its records may be seen twice or not at all); "
        "later epochs are exact."
      )

  def _run_epoch(self, sigterm):
    """One epoch (or its remainder). Returns False if preempted."""
    config, state, clock = self.config, self.state, self.clock
    epoch = int(state.epoch.numpy())
    iterator = self.train_iterator(
      epoch,
      int(state.step_in_epoch.numpy())
      + int(state.rolled_back_steps_in_epoch.numpy()),
    )
    progress = outputs.Progress(
      self.steps_per_epoch, epoch, config.epochs, self.is_chief
    )
    totals = state.epoch_totals.numpy().copy()  # Zero unless resumed.
    start, images_done = time.time(), 0
    while int(state.step_in_epoch.numpy()) < self.steps_per_epoch:
      step = int(state.step.numpy())
      num_steps = clock.steps_this_call(step, int(state.step_in_epoch.numpy()))
      votes = requests_vector(stop=sigterm.requested, save=clock.time_to_save())
      # The optimizer's own count before the call: what a rollback restores
      # (under float16 it excludes overflow-skipped steps, so the run's step
      # is not it).
      counter = int(optimization.step_counter(self.optimizer).numpy())
      faults.plant_nan(step, self.model)
      clock.before_call(step)
      call_totals, step_losses, agreed, weights_finite = self.train_steps(
        iterator, tf.constant(num_steps), votes
      )
      profiled = clock.after_call(step + num_steps)
      if profiled:
        log.info(profiled)
      if self._rolled_back(
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
      progress.update(
        int(state.step_in_epoch.numpy()),
        summary["loss"],
        summary["accuracy"],
        images_done / (time.time() - start),
      )
      requests = agreed_requests(agreed)
      if clock.checkpoint_due(int(state.step.numpy()), requests):
        self.checkpoints.save(int(state.step.numpy()))
      if requests["stop"]:
        self.writer.write_status("preempted", state)
        log.info(
          f"Preempted (SIGTERM): saved step {int(state.step.numpy())}; run the "
          "same command to resume."
        )
        return False
    elapsed = time.time() - start
    train_figures = metrics.summarize(
      totals, config.num_classes, with_skipped=True
    )
    val_figures = self.evaluate()
    self._end_epoch(epoch, train_figures, val_figures, images_done / elapsed)
    return True

  def _log_steps(self, step, num_steps, call_totals):
    """Step-level TensorBoard points (chief): the mean training figures of
    the steps since the last point and the rate of the last update, from
    totals the call already returned (no extra device round trip)."""
    if not self.is_chief:
      return
    if self._pending_log is None:
      self._pending_log = [np.zeros(self.stats_layout.size), 0]
    self._pending_log[0] += call_totals
    self._pending_log[1] += num_steps
    if not self.clock.time_to_log(step):
      return
    figures = metrics.summarize(
      self._pending_log[0], self.config.num_classes, with_skipped=True
    )
    figures["learning_rate"] = float(
      self.schedule(
        max(0, int(optimization.step_counter(self.optimizer).numpy()) - 1)
      )
    )
    self.writer.write_step_figures(step, figures)
    self._pending_log = None

  def _rolled_back(self, step, step_losses, weights_finite, counter):
    """False if the call that started at `step` (the optimizer's count then:
    `counter`) left everything finite; else raises or rolls back
    (--nan_policy) and returns True."""
    if not np.all(np.isfinite(step_losses)):
      bad_step = step + int(np.argmin(np.isfinite(step_losses))) + 1
      self._recover_from_nan(f"loss became NaN/Inf at step {bad_step}", counter)
      return True
    if not weights_finite:
      bad_step = step + len(step_losses)
      self._recover_from_nan(
        f"weights or optimizer state became NaN/Inf at step {bad_step}", counter
      )
      return True
    return False

  def _sample_inputs(self, count=8):
    """A few augmented training images, exactly as the model sees them."""
    # Read locally even with --data_service: a second dataset under the
    # run's service job name would clash with the training one.
    local_spec = dataclasses.replace(
      self.train_spec, data_service="", device_dtypes=False
    )
    dataset = data.make_train_dataset(
      local_spec, tf.distribute.InputContext(1, 0, 1), count
    )
    images, _, _ = next(iter(dataset))
    return images

  def _recover_from_nan(self, what, counter):
    """Raises, or rolls back to the last checkpoint with a lower rate.

    The step counter, the data position and the early-stopping history are
    kept (the batches that blew up are skipped, and the input position
    records them); weights, optimizer slots and dropout state come from the
    checkpoint. The schedule's position is the optimizer's count before the
    failed call (`counter`), as if those batches had been skipped, so the
    rate used and the rate logged agree - and under float16 the count keeps
    excluding overflow-skipped steps.
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
    kept = (
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
    position = {k: getattr(state, k).numpy() for k in kept}
    multiplier = float(state.lr_multiplier.numpy())
    restored = self.checkpoints.restore_latest()
    if not restored:
      raise TrainingError(f"{what} and there is no checkpoint to roll back to")
    for name, value in position.items():
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

  def _end_epoch(self, epoch, train_figures, val_figures, images_per_sec):
    config, state = self.config, self.state
    record = {
      "epoch": epoch + 1,
      "step": int(state.step.numpy()),
      "loss": train_figures["loss"],
      "accuracy": train_figures["accuracy"],
      # The rate of the last update (the optimizer's step drives the
      # schedule; float16 loss scaling does not count skipped steps).
      "learning_rate": float(
        self.schedule(
          max(0, int(optimization.step_counter(self.optimizer).numpy()) - 1)
        )
      ),
      "images_per_sec": images_per_sec,
    }
    for key in ("auc", "top5_accuracy"):
      if key in train_figures:
        record[key] = train_figures[key]
    if config.skip_corrupt:
      record["skipped"] = train_figures["skipped"]
    for key in ("loss", "accuracy", "auc", "top5_accuracy", "skipped"):
      if key in val_figures:
        record[f"val_{key}"] = val_figures[key]
    monitor = record.get(config.early_stopping_monitor, record["loss"])
    sign = -1.0 if config.early_stopping_monitor == "val_accuracy" else 1.0
    if sign * monitor < float(state.best_monitor.numpy()):
      state.best_monitor.assign(sign * monitor)
      state.epochs_without_improvement.assign(0)
    else:
      state.epochs_without_improvement.assign_add(1)
    improved = "val_accuracy" in record and (
      record["val_accuracy"] > float(state.best_val_accuracy.numpy())
    )
    if improved:
      state.best_val_accuracy.assign(record["val_accuracy"])
    new_best = self._update_best_metric(record)
    if config.lr_schedule == "plateau":
      self._update_plateau(record)
    state.epoch.assign_add(1)
    state.step_in_epoch.assign(0)
    state.rolled_back_steps_in_epoch.assign(0)
    state.epoch_totals.assign(tf.zeros_like(state.epoch_totals))
    # The latest checkpoint last: a run killed before it trains this epoch
    # again and rewrites what the epoch wrote (best/, its metrics line)
    # with the same values; after it, both are already there. So no latest
    # checkpoint has a best value that no best/ checkpoint holds, or an
    # epoch missing from metrics.jsonl.
    faults.point("epoch_end:before")
    if new_best:
      # best/ holds the averaged weights as the model's (what the export and
      # trainer.evaluate read); the raw ones sit in its optimizer's slots.
      with self.averaged_weights.swapped_in():
        self.checkpoints.save_best(int(state.step.numpy()))
    self.writer.append_metrics(record)
    faults.point("metrics:after")
    self.checkpoints.save(int(state.step.numpy()))
    faults.point("epoch_checkpoint:after")
    if self.is_chief:
      hypertune.report(config.hypertune_metric, record)
      log.info(outputs.epoch_line(record, config.epochs))
      plots.plot_run(self.model_dir)  # Curves so far; cheap, per epoch.

  def _update_best_metric(self, record):
    """True if this epoch is --best_metric's best so far (then best/ keeps
    it). Without validation data the default val_accuracy keeps the latest."""
    name = self.config.best_metric
    if name not in record:
      return self.eval_spec is None
    signed = _signed(name, record[name])
    if signed < float(self.state.best_metric_value.numpy()):
      self.state.best_metric_value.assign(signed)
      return True
    return False

  def _update_plateau(self, record):
    """The 'plateau' schedule's epoch-end decision: divide the rate by 10
    after --plateau_patience epochs without an improvement of
    --plateau_monitor by more than --plateau_min_delta. Every worker takes
    it from the same all-reduced figures, so all agree."""
    config, state = self.config, self.state
    signed = _signed(config.plateau_monitor, record[config.plateau_monitor])
    if signed < float(state.plateau_best.numpy()) - config.plateau_min_delta:
      state.plateau_best.assign(signed)
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

  def _patience_exhausted(self):
    patience = self.config.early_stopping_patience
    return bool(patience) and (
      int(self.state.epochs_without_improvement.numpy()) >= patience
    )

  def _should_stop_early(self):
    if self._patience_exhausted():
      log.info(
        f"Early stopping: {self.config.early_stopping_monitor} has not "
        f"improved for {self.config.early_stopping_patience} epochs."
      )
      return True
    return False

  def _export(self):
    """Chief exports to the run's export dir; others to a scratch dir (TF
    needs every worker to take part)."""
    target = self.run_dir
    if not self.is_chief:
      scratch = tempfile.mkdtemp(prefix="alexnet-export-")
      target = outputs.RunDir(scratch, scratch, scratch)
    portable = model_lib.portable_copy(
      self.model,
      self.config.model,
      self.config.num_classes,
      self.image_size,
      self.config.dropout_rate,
      "float32"
      if self.config.export_precision == "float32"
      else self.precision,
    )
    faults.point("export:before")
    if self.is_chief:
      if tf.io.gfile.exists(target.export):
        tf.io.gfile.rmtree(target.export)  # A partial export of a killed run.
      tf.io.gfile.makedirs(target.export)
      records.write_text_atomically(target.export_in_progress, "exporting\n")
    serving.export(
      portable, target, self.image_size, self.config.augment, self.class_names
    )
    if not self.is_chief:
      shutil.rmtree(target.root, ignore_errors=True)
      return None
    faults.point("export:before_marker")
    records.write_text_atomically(
      target.export_complete, f"step {int(self.state.step.numpy())}\n"
    )
    tf.io.gfile.remove(target.export_in_progress)
    faults.point("export:after")
    return target.export

  def _finish(self, status, export=True):
    state = self.state
    self.writer.write_status(status, state)
    faults.point("status:after")
    summary = {
      "status": status,
      "epoch": int(state.epoch.numpy()),
      "step": int(state.step.numpy()),
      "model_dir": self.model_dir,
      "best_val_accuracy": float(state.best_val_accuracy.numpy()),
      "best_metric": self.config.best_metric,
      "best_metric_value": _signed(
        self.config.best_metric, float(state.best_metric_value.numpy())
      ),
      # Of the weights this worker trained, before anything is
      # restored: equal digests on every worker prove one model.
      "weights_sha256": outputs.weights_digest(self.model),
    }
    # The chief's last save_best is complete before anyone reads best/.
    self._any_worker(False)
    if (
      export and status in ("completed", "early_stopped") and self.config.export
    ):
      self.checkpoints.restore_best()
      summary["exported"] = self._export()
    if self.is_chief:
      plots.plot_run(self.model_dir)  # A killed run's last epoch included.
    self.writer.close()
    self.checkpoints.cleanup()
    faults.point("finish:after")
    return summary


def _signed(metric, value):
  """`value` of a metrics.jsonl field, signed so that lower is better (and
  back: the sign is its own inverse)."""
  return float(value) if "loss" in metric else -float(value)


def train(
  config: config_lib.Config, config_name: str = "custom"
) -> dict[str, Any]:
  """Trains `config` and returns a summary dict (status, epoch, step, ...).

  Raises:
    UserError: a bad flag, file or value (one line).
    A SIGTERM'd run is not an error: it returns status "preempted".
  """
  return Trainer(config, config_name).run()
