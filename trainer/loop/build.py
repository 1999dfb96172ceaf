"""Builds the parts of a run, each testable alone: the runtime (strategy,
precision, devices), the inputs, the model and optimizer (inside the
strategy's scope), the checkpoints. `trainer.train.Trainer` calls them in
order; nothing here trains."""

import dataclasses
import hashlib
import os

import keras
import tensorflow as tf

from trainer import config as config_lib
from trainer import data
from trainer import metrics
from trainer import model as model_lib
from trainer import optimization
from trainer import strategy as strategy_lib
from trainer import warm_start
from trainer.errors import UserError
from trainer.errors import describe
from trainer.logs import EVERY_WORKER
from trainer.logs import log
from trainer.logs import report_to_stdout
from trainer.loop.checkpoints import CheckpointSet
from trainer.loop.clock import LoopClock
from trainer.loop.state import TrainState


def check_writable(directory, name):
  """Raises UserError naming `name` if `directory` cannot be written."""
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


def build_runtime(config, run_dir):
  """The strategy, precision and devices (strategy.set_up), with the model
  dir checked writable, the banner said, determinism and seeds set."""
  runtime = strategy_lib.set_up(
    config,
    remote_tpu_paths={
      "--train_data": config.train_data,
      "--eval_data": config.eval_data,
      "--model_dir": run_dir.root,
    },
  )
  if runtime.info.is_chief:
    for directory, name in (
      (run_dir.root, "--model_dir"),
      (run_dir.checkpoint_root, "$AIP_CHECKPOINT_DIR"),
      (run_dir.log_dir, "$AIP_TENSORBOARD_LOG_DIR"),
    ):
      check_writable(directory, name)
  report_to_stdout(runtime.info.is_chief)
  log.info(runtime.banner(config.global_batch_size), extra=EVERY_WORKER)
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()
  keras.utils.set_random_seed(config.seed)
  return runtime


@dataclasses.dataclass(frozen=True)
class Inputs:
  """What the run reads: its input specs, class names, steps per epoch."""

  train_spec: data.InputSpec
  eval_spec: data.InputSpec | None
  class_names: tuple
  steps_per_epoch: int


def build_inputs(config, runtime, run_dir):
  """The run's Inputs, as its strategy's devices take them.

  Raises:
    UserError: fewer examples than one global batch (and what
      data.resolve_input_specs raises).
  """
  info = runtime.info
  train_spec, eval_spec = data.resolve_input_specs(
    config,
    runtime.image_size,
    counts_path=run_dir.example_counts,
    remember_counts=info.is_chief,
    wait_for_chief=not info.is_chief,
  )
  if config.data_service:
    # One job per run and epoch, shared by all workers of this run.
    run_id = hashlib.sha1(run_dir.root.encode()).hexdigest()[:10]
    train_spec = dataclasses.replace(
      train_spec,
      job_name=f"alexnet-{run_id}",
      data_service=strategy_lib.data_service_address(config.data_service),
    )
    log.info(f"Input through the tf.data service at {train_spec.data_service}")
  if not config.data_service:  # The service reads for every pipeline.
    data.check_pipelines(train_spec, info.num_input_pipelines)
  steps_per_epoch = config.steps_per_epoch or (
    train_spec.num_examples // config.global_batch_size
  )
  if steps_per_epoch < 1:
    raise UserError(
      f"{train_spec.num_examples} training examples are "
      f"fewer than --global_batch_size="
      f"{config.global_batch_size}"
    )
  return Inputs(
    train_spec=data.for_strategy(train_spec, info.name),
    eval_spec=eval_spec and data.for_strategy(eval_spec, info.name),
    class_names=data.class_names(train_spec.files, config.num_classes),
    steps_per_epoch=steps_per_epoch,
  )


def build_model(config, runtime, run_dir):
  """The model, warm-started and frozen as the config says, in the scope."""
  # Read outside the scope: the source model's variables are not mirrored.
  source = warm_start.read_source(config, run_dir)
  with runtime.info.strategy.scope():
    try:
      model = model_lib.build_model(
        config.model,
        config.num_classes,
        runtime.image_size,
        config.dropout_rate,
        sync_batch_norm=runtime.info.num_replicas > 1,
        batch_norm_momentum=config.batch_norm_momentum,
        fused_batch_norm=config.batch_norm == "fused",
      )
    except ValueError as e:
      raise UserError(f"--model={config.model}: {e}") from None
    warm_start.prepare_model(model, config, source)
  return model


@dataclasses.dataclass(frozen=True)
class Optimization:
  """The run's state variables, learning-rate schedule and optimizer."""

  state: TrainState
  schedule: optimization.EpochSchedule
  optimizer: keras.optimizers.Optimizer


def build_optimization(config, runtime, model, steps_per_epoch):
  """The state, schedule and optimizer, its slots built (so checkpoints
  restore into them), in the strategy's scope."""
  with runtime.info.strategy.scope():
    state = TrainState(
      metrics.StatsLayout(config.num_classes, with_skipped=True).size
    )
    schedule = optimization.EpochSchedule(
      config.lr_schedule,
      config.learning_rate,
      steps_per_epoch,
      config.epochs,
      config.lr_constant_epochs,
      config.warmup_epochs,
      state.lr_multiplier,
      boundaries=config_lib.lr_boundaries(config),
      plateau_factor=state.plateau_factor,
    )
    optimizer = optimization.build_optimizer(
      config,
      schedule,
      loss_scaling=runtime.precision == "mixed_float16",
      fused=runtime.info.name != "tpu",
      all_reduce_dtype=runtime.all_reduce_dtype,
    )
    optimizer.build(model.trainable_variables)
  return Optimization(state, schedule, optimizer)


def build_clock(config, runtime, steps_per_epoch, run_dir):
  """The LoopClock: --steps_per_call, else 100 on TPUs (a host round trip
  per call costs them most) and 10 elsewhere."""
  return LoopClock(
    config,
    config.steps_per_call or (100 if runtime.info.name == "tpu" else 10),
    steps_per_epoch,
    run_dir.profile,
    runtime.info.is_chief,
  )


def build_checkpoints(config, runtime, run_dir, model, optimizer, state):
  """The CheckpointSet of everything a resume needs: model, optimizer,
  dropout's random state, the run's state."""
  # Dropout's random-seed state is a model variable but not a weight; it
  # must be saved too, or a resumed run draws different masks.
  weight_ids = {id(w) for w in model.weights}
  rng_states = [v for v in model.variables if id(v) not in weight_ids]
  checkpoint = tf.train.Checkpoint(
    model=model,
    optimizer=optimizer,
    rng_states=rng_states,
    **state.trackables(),
  )
  return CheckpointSet(
    checkpoint,
    run_dir,
    runtime.info.is_chief,
    runtime.info.task,
    max_to_keep=config.keep_checkpoints,
  )
