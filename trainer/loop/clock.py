"""*When*, within an epoch: how many steps the next call runs, when the
profiler starts and stops, and when a checkpoint is due."""

import time

import tensorflow as tf

from trainer.config import profile_range


class LoopClock:
  """Decides *when*: how many steps the next call runs, when the profiler
  starts and stops, and when a checkpoint is due. Knows nothing of how a
  step runs (that is trainer.loop.step's)."""

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
