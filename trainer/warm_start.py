"""Warm start and fine-tuning: weights from another run (--init_from) and
layers kept fixed (--freeze, --train_from).

Two steps, because the source model must not be built inside the training
strategy's scope (its variables would be mirrored, and under multi_worker
created with collectives): `read_source` runs before the scope, on every
worker (each reads the same files, so all load the same weights), and
`prepare_model` runs inside it, after `build_model` and before the optimizer
is built, so frozen layers get no optimizer slots and no updates.
"""

import dataclasses
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from trainer import config as config_lib
from trainer import model as model_lib  # Also registers our layers for .keras.
from trainer import outputs
from trainer.errors import UsageError
from trainer.errors import UserError
from trainer.errors import describe
from trainer.logs import log


@dataclasses.dataclass(frozen=True)
class Source:
  """Weights read from --init_from: where from, and {layer name: arrays}."""

  location: str
  weights: dict


def _checkpoint_of(init_from):
  """(checkpoint prefix, the config.json of the run that wrote it), or None
  when `init_from` is neither a run dir with checkpoints nor a prefix."""
  if tf.io.gfile.isdir(init_from):
    run = outputs.RunDir.of(init_from)
    prefix = tf.train.latest_checkpoint(run.best) or tf.train.latest_checkpoint(
      run.checkpoints
    )
    if not prefix:
      raise UserError(
        f"--init_from={init_from}: this dir holds no checkpoint "
        f"(looked in {run.best} and {run.checkpoints})"
      )
    return prefix, run.config
  if tf.io.gfile.exists(init_from + ".index"):
    # DIR/checkpoints/ckpt-N or DIR/best/ckpt-N: the run's config is in DIR.
    run_root = os.path.dirname(os.path.dirname(init_from.rstrip("/")))
    return init_from, os.path.join(run_root, "config.json")
  return None


def _read_checkpoint(init_from, prefix, config_path):
  """Rebuilds the model the source run trained and restores it."""
  if not tf.io.gfile.exists(config_path):
    raise UserError(
      f"--init_from={init_from}: no {config_path} (the run's "
      "config says which model the checkpoint holds)"
    )
  source_config = config_lib.load(config_path)
  model = model_lib.build_model(
    source_config.model,
    source_config.num_classes,
    config_lib.image_size(source_config),
    source_config.dropout_rate,
    fused_batch_norm=source_config.batch_norm == "fused",
  )
  try:
    # The trainer saves the model under "model", beside the optimizer and the
    # loop state, which are not wanted here.
    tf.train.Checkpoint(model=model).restore(
      prefix
    ).expect_partial().assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.OpError) as e:
    raise UserError(
      f"--init_from={init_from}: cannot restore {prefix} into "
      f"the --model={source_config.model} its config.json "
      f"names ({describe(e)})"
    ) from None
  return model


def _read_keras_file(init_from):
  if not tf.io.gfile.exists(init_from):
    raise UserError(f"--init_from={init_from}: no such file")
  scratch = None
  path = init_from
  if "://" in init_from:  # Keras reads local files: copy it over first.
    scratch = tempfile.mkdtemp(prefix="alexnet-init-")
    path = os.path.join(scratch, "model.keras")
    tf.io.gfile.copy(init_from, path)
  try:
    return keras.models.load_model(path, compile=False)
  except (ValueError, TypeError, OSError) as e:
    raise UserError(
      f"--init_from={init_from}: not a Keras model file ({describe(e)})"
    ) from None
  finally:
    if scratch:
      shutil.rmtree(scratch, ignore_errors=True)


def read_source(config, run_dir):
  """The weights --init_from names, or None (no --init_from, or a model dir
  that already holds checkpoints: that run resumes and says so).

  Call outside the strategy's scope, on every worker.

  Raises:
    UserError: a path that is not a run dir with checkpoints, a checkpoint
      prefix or a .keras file, or that cannot be read.
  """
  init_from = config.init_from
  if not init_from:
    return None
  if tf.train.latest_checkpoint(run_dir.checkpoints):
    log.info(
      f"--init_from={init_from} is ignored: {run_dir.checkpoints} holds "
      "checkpoints, so this run resumes from them."
    )
    return None
  try:
    if init_from.endswith(".keras"):
      location, model = init_from, _read_keras_file(init_from)
    else:
      found = _checkpoint_of(init_from)
      if found is None:
        raise UserError(
          f"--init_from={init_from}: not a run dir, checkpoint or .keras file"
        )
      location, model = found[0], _read_checkpoint(init_from, *found)
  except tf.errors.OpError as e:  # Storage: permissions, network.
    raise UserError(f"--init_from={init_from}: {describe(e)}") from None
  weights = {
    layer.name: [np.asarray(w) for w in layer.weights]
    for layer in model.layers
    if layer.weights
  }
  return Source(location, weights)


def _shapes(arrays):
  return [tuple(a.shape) for a in arrays]


def load_matching_layers(model, source):
  """Copies every layer whose name and weight shapes match `source`.

  Returns:
    (names loaded, {name reset: why}), in model order.
  """
  loaded, reset = [], {}
  for layer in model.layers:
    if not layer.weights:
      continue
    theirs = source.weights.get(layer.name)
    ours = _shapes(layer.weights)
    if theirs is None:
      reset[layer.name] = "not in the source"
    elif _shapes(theirs) != ours:
      mine, other = next(
        (a, b)
        for a, b in zip(ours + [None], _shapes(theirs) + [None])
        if a != b
      )
      reset[layer.name] = f"source {other}, here {mine}"
    else:
      layer.set_weights(theirs)
      loaded.append(layer.name)
  return loaded, reset


def layers_to_freeze(model, config):
  """The layers --freeze names, or those before --train_from.

  Raises:
    UsageError: a name that is not a layer with weights of this model (the
      message lists those that are).
  """
  weighted = [layer.name for layer in model.layers if layer.weights]
  if config.train_from:
    if config.train_from not in weighted:
      raise UsageError(
        f"--train_from={config.train_from}: no such layer with "
        f"weights in --model={config.model}; valid: "
        f"{', '.join(weighted)}"
      )
    return weighted[: weighted.index(config.train_from)]
  names = [n for n in config.freeze.split(",") if n]
  unknown = [n for n in names if n not in weighted]
  if unknown:
    raise UsageError(
      f"--freeze: no layer {', '.join(unknown)} with weights "
      f"in --model={config.model}; valid: {', '.join(weighted)}"
    )
  return [n for n in weighted if n in names]


def prepare_model(model, config, source):
  """Loads `source` (from `read_source`) into `model` and freezes layers.

  Call inside the strategy's scope, after `build_model` and before the
  optimizer is built. A frozen layer (trainable=False) is left out of
  `model.trainable_variables`, so it gets no gradient, no optimizer slot and
  no update; Keras' BatchNormalization (and ours, which defers to it then)
  normalises with its moving statistics and leaves them unchanged.
  """
  if source is not None:
    loaded, reset = load_matching_layers(model, source)
    resets = "; ".join(f"reset {name} ({why})" for name, why in reset.items())
    log.info(
      f"Warm start from {source.location}: loaded "
      f"{', '.join(loaded) or 'no layer'}"
      f"{'; ' + resets if resets else ''}."
    )
  frozen = layers_to_freeze(model, config)
  for name in frozen:
    model.get_layer(name).trainable = False
  if frozen:
    log.info(
      f"Frozen (not trained; BatchNorm in inference mode): {', '.join(frozen)}."
    )
