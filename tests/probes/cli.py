"""Probes that run a command (`python -m MODULE`) in a changed process:
without one of its packages."""

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

