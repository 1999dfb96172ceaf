"""Probes of TensorFlow's start-up lines: each imports TensorFlow itself, so
that what reaches stderr is the start-up's alone."""

import os

# As every command does before TensorFlow starts (the CLI's own default).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


def plain():
  """Imports TensorFlow and lists devices, as a script of the user's would."""
  import tensorflow as tf

  tf.config.list_physical_devices()


def quiet():
  """Starts TensorFlow as the commands do, then lists devices."""
  from trainer import startup

  tf = startup.start_tensorflow()
  tf.config.list_physical_devices()
