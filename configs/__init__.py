"""Named, complete experiments. `python -m trainer.task --config=NAME`.

Each module defines `CONFIG`, a `trainer.config.Config`, and says in its
docstring the command that runs it and what it should reach.
"""

import importlib

NAMES = ("demo", "cats_vs_dogs", "imagenet_paper", "tiny")
DEFAULT = "demo"


def get_config(name):
  """The named Config. Raises KeyError listing the valid names."""
  if name not in NAMES:
    raise KeyError(f"Unknown config {name!r}; valid: {', '.join(NAMES)}")
  return importlib.import_module(f"configs.{name}").CONFIG
