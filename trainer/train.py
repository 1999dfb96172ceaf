"""The training loop: `train(config)` is the one entry tests, notebooks and
the CLI call.

Data flows one way: config -> strategy -> (inside its scope) model, optimizer,
datasets -> a custom loop (`strategy.run` inside a `tf.function` that runs
several steps per call) -> outputs in the model dir. Keras `fit` is not used:
it fails under MultiWorkerMirroredStrategy with Keras 3.

`Trainer` puts together what trainer/loop/ builds (see its modules): the
parts of a run (build), the step that owns *how* (step) and the controller
that owns *when* (controller).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

from trainer import config as config_lib
from trainer import data
from trainer import evaluation
from trainer import optimization
from trainer import outputs
from trainer import strategy as strategy_lib
from trainer.errors import TrainingError  # noqa: F401 (callers catch it here)
from trainer.loop import build
from trainer.loop import controller as controller_lib
from trainer.loop import step as step_lib
from trainer.loop.state import TrainState as _TrainState  # noqa: F401
from trainer.loop.state import agreed_requests  # noqa: F401
from trainer.loop.state import requests_vector  # noqa: F401


class Trainer:
  """A run, built: its runtime, inputs, model, optimizer, checkpoints and
  writers (trainer.loop.build), the compiled step (trainer.loop.step) and
  the controller that runs it to its end (trainer.loop.controller)."""

  def __init__(self, config, config_name="custom"):
    self.config = config = config_lib.validate(config)
    self.run_dir = outputs.RunDir.for_training(config.model_dir, config_name)
    self.runtime = build.build_runtime(config, self.run_dir)
    inputs = build.build_inputs(config, self.runtime, self.run_dir)
    self.train_spec, self.eval_spec = inputs.train_spec, inputs.eval_spec
    self.class_names = inputs.class_names
    self.steps_per_epoch = inputs.steps_per_epoch
    self.model = build.build_model(config, self.runtime, self.run_dir)
    parts = build.build_optimization(
      config, self.runtime, self.model, self.steps_per_epoch
    )
    self.state, self.schedule, self.optimizer = (
      parts.state,
      parts.schedule,
      parts.optimizer,
    )
    # --ema_decay: validation, best/ and the export see the averaged weights.
    self.averaged_weights = optimization.AveragedWeights(
      self.strategy, self.optimizer, self.model.trainable_variables
    )
    self.checkpoints = build.build_checkpoints(
      config, self.runtime, self.run_dir, self.model, self.optimizer, self.state
    )
    self.writer = outputs.RunWriter(self.run_dir, self.is_chief)
    self.clock = build.build_clock(
      config, self.runtime, self.steps_per_epoch, self.run_dir
    )
    self.step = step_lib.TrainStep(
      config, self.strategy, self.model, self.optimizer, self.state
    )
    self.train_steps = self.step.make_call()
    self._eval_call = evaluation.make_eval_call(
      self.strategy, self.model, config.num_classes
    )
    self.controller = controller_lib.Controller(self)

  # What the runtime resolved, by the names the loop uses.
  model_dir = property(lambda self: self.run_dir.root)
  info = property(lambda self: self.runtime.info)
  strategy = property(lambda self: self.runtime.info.strategy)
  precision = property(lambda self: self.runtime.precision)
  image_size = property(lambda self: self.runtime.image_size)
  is_chief = property(lambda self: self.runtime.info.is_chief)
  num_pipelines = property(lambda self: self.runtime.info.num_input_pipelines)

  def run(self):
    """Trains to the end (or early stop / preemption). Returns a summary.

    Raises:
      TrainingError: bad input data (naming what and where) or a NaN loss.
    """
    return self.controller.run()

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

  def train_iterator(self, epoch, steps_into_epoch):
    """This epoch's distributed input, `steps_into_epoch` steps' worth of
    records in (a resume reads at most one segment to get there)."""
    records_per_step = self.config.global_batch_size // self.num_pipelines
    skip = steps_into_epoch * records_per_step
    dataset = strategy_lib.distribute_datasets(
      self.strategy,
      lambda ctx: data.make_train_dataset(
        self.train_spec, ctx, self.config.global_batch_size, epoch, skip
      ),
    )
    return iter(dataset)

  def sample_inputs(self, count=8):
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

  def any_worker(self, flag):
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


def train(
  config: config_lib.Config, config_name: str = "custom"
) -> dict[str, Any]:
  """Trains `config` and returns a summary dict (status, epoch, step, ...).

  Raises:
    UserError: a bad flag, file or value (one line).
    A SIGTERM'd run is not an error: it returns status "preempted".
  """
  return Trainer(config, config_name).run()
