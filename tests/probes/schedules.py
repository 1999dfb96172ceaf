"""Probes of the 'plateau' schedule's state: across workers and with a NaN
rollback. Both train the tiny model on 5 classes from $TRAIN_DATA and
$EVAL_DATA (the test's 256 training and 80 validation images)."""

import os

import numpy as np
from prelude import emit
from prelude import tiny

from trainer import train as train_lib


def five_classes(**changes):
  """The tiny config on the test's 5-class data, with `changes`."""
  return tiny(
    num_classes=5,
    train_data=os.environ["TRAIN_DATA"],
    eval_data=os.environ["EVAL_DATA"],
    train_examples=256,
    eval_examples=80,
    **changes,
  )


def plateau_on_workers():
  """$EPOCHS epochs on each worker, lowering the rate when val_loss improves
  by less than 100 for $PATIENCE epochs (default 1); each worker's plateau
  state and weights digest."""
  config = five_classes(
    epochs=int(os.environ["EPOCHS"]),
    strategy="multi_worker",
    lr_schedule="plateau",
    plateau_monitor="val_loss",
    plateau_patience=int(os.environ.get("PATIENCE", "1")),
    plateau_min_delta=100.0,
  )
  trainer = train_lib.Trainer(config)
  summary = trainer.run()
  state = trainer.state
  emit(
    factor=float(state.plateau_factor.numpy()),
    best=float(state.plateau_best.numpy()),
    waiting=int(state.plateau_epochs_without_improvement.numpy()),
    digest=summary["weights_sha256"],
  )


def nan_rollback_with_plateau():
  """3 epochs on one device with the plateau schedule on the training loss;
  the output kernel turns NaN once, mid-epoch 3 (step 20), and training rolls
  back. The rollback's rate multiplier and the plateau's factor at the end."""
  config = five_classes(
    epochs=3,
    lr_schedule="plateau",
    plateau_monitor="loss",
    plateau_patience=1,
    plateau_min_delta=100.0,
    nan_policy="rollback",
    checkpoint_every_steps=4,
  )
  trainer = train_lib.Trainer(config)
  real_call, calls = trainer.train_steps, []

  def call(iterator, num_steps, control):
    calls.append(int(trainer.state.step.numpy()))
    if calls[-1] == 20 and calls.count(20) == 1:  # Mid-epoch 3.
      kernel = trainer.model.get_layer("predictions").kernel
      kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    return real_call(iterator, num_steps, control)

  trainer.train_steps = call
  summary = trainer.run()
  emit(
    status=summary["status"],
    multiplier=float(trainer.state.lr_multiplier.numpy()),
    factor=float(trainer.state.plateau_factor.numpy()),
  )
