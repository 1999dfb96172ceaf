"""Probes that run a command (`python -m MODULE`) and look at what it did:
without one of its packages, or at what it imported."""

import importlib
import runpy
import sys

from absl import app


def without_package(package, module, *args):
  """Runs `python -m MODULE ARGS...` with `package` unimportable.

  Args:
    package: the top-level name to hide; importing it raises ImportError,
      as on a machine where it is not installed.
    module: the command's module, e.g. trainer.task.
    *args: the command's flags.
  """
  sys.modules[package] = None
  sys.argv = [module, *args]
  runpy.run_module(module, run_name="__main__")


def imports_tensorflow(module, *args):
  """Runs MODULE's main with ARGS under absl's app.run, then prints whether
  anything imported TensorFlow: TF_IMPORTED or NO_TF."""
  sys.argv = [module, *args]
  command = importlib.import_module(module)
  try:
    app.run(command.main)
  except SystemExit:
    pass
  print("TF_IMPORTED" if "tensorflow" in sys.modules else "NO_TF")
