"""Probes that run a command (`python -m MODULE`) and look at what it did:
without one of its packages, or at what it imported."""

import runpy
import sys


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
  """Runs `python -m MODULE ARGS...`, then prints whether anything imported
  TensorFlow: TF_IMPORTED or NO_TF."""
  sys.argv = [module, *args]
  try:
    # As `python -m` runs it: a command may define its flags only there.
    runpy.run_module(module, run_name="__main__")
  except SystemExit:  # absl's app.run ends every command with one.
    pass
  print("TF_IMPORTED" if "tensorflow" in sys.modules else "NO_TF")
