"""Runs one probe in this interpreter: `python tests/probes/run.py
MODULE:FUNCTION [ARG...]` calls FUNCTION(ARG, ...) of tests/probes/MODULE.py.

A probe is code a test runs in a fresh interpreter: one that must set up
logical devices or join a cluster before TensorFlow initialises, or must not
share the test process's imports and flags. Probes that a test reads through
conftest.run_probe/run_workers take their parameters from the environment
(MODEL_DIR, WORKER_INDEX, ...) and report with prelude.emit.

The modules here are imported as top-level modules, so none may take the
name of one an installed package provides (`hypertune`, for one, is
cloudml-hypertune's: trainer.hypertune imports it).
"""

import importlib
import os
import sys


def main(argv):
  if len(argv) < 2 or argv[1].count(":") != 1:
    sys.exit(f"usage: {argv[0]} MODULE:FUNCTION [ARG...]. Received: {argv[1:]}")
  module_name, function_name = argv[1].split(":")
  # Under `python -I` (another environment's interpreter, kept from this
  # checkout's egg-info) this script's directory is not on sys.path.
  here = os.path.dirname(os.path.abspath(__file__))
  if here not in sys.path:
    sys.path.insert(0, here)
  probe = getattr(importlib.import_module(module_name), function_name)
  probe(*argv[2:])


if __name__ == "__main__":
  main(sys.argv)
