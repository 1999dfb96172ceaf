"""Named, complete experiments. `python -m trainer.task --config=NAME`.

Each module defines `CONFIG`, a `trainer.config.Config`, and says in its
docstring the command that runs it and what it should reach.

`--config` also takes a file: a `config.json` a run wrote (re-runs it with
every value it records) or a Python config module, a `.py` file that defines
`get_config()` returning a `Config` (or `CONFIG`, as the modules here do).
"""

import importlib
import importlib.util
import os

from trainer import config as config_lib
from trainer.errors import UserError
from trainer.errors import describe

NAMES = ("demo", "cats_vs_dogs", "imagenet_paper", "tiny")
DEFAULT = "demo"


def _from_module(path):
  """The Config a Python config module defines, recording the path."""
  if not os.path.isfile(path):
    raise UserError(f"{path}: No such file or directory")
  spec = importlib.util.spec_from_file_location(
    "_config_" + os.path.splitext(os.path.basename(path))[0], path
  )
  module = importlib.util.module_from_spec(spec)
  # The module is the user's code: whatever it raises is theirs to fix, said
  # in one line.
  try:
    spec.loader.exec_module(module)
    if hasattr(module, "get_config"):
      config = module.get_config()
    elif hasattr(module, "CONFIG"):
      config = module.CONFIG
    else:
      raise UserError("defines neither get_config() nor CONFIG")
  except Exception as e:
    detail = (
      str(e)
      if isinstance(e, UserError)
      else (f"{type(e).__name__}: {describe(e)}")
    )
    raise UserError(f"{path}: {detail}") from None
  if not isinstance(config, config_lib.Config):
    raise UserError(
      f"{path}: its config is a {type(config).__name__}, not "
      "a trainer.config.Config"
    )
  try:
    return config.replace(config=path)
  except UserError as e:  # a value validate() refuses
    raise UserError(f"{path}: {e}") from None


def get_config(name_or_path):
  """The Config `--config=name_or_path` stands for.

  Args:
    name_or_path: a name from NAMES, a config.json a run wrote, or a Python
      config module (.py).

  Returns:
    The Config, its `config` field saying where it came from: the name or
    module path; a config.json keeps the one it records (it is the same
    experiment).

  Raises:
    UserError: an unknown name, or a file that is missing or holds no config
      (one line, naming it).
  """
  if name_or_path in NAMES:
    config = importlib.import_module(f"configs.{name_or_path}").CONFIG
    return config.replace(config=name_or_path)
  if name_or_path.endswith(".json"):
    return config_lib.load(name_or_path, strict=True)
  if name_or_path.endswith(".py"):
    return _from_module(name_or_path)
  raise UserError(
    f"Unknown config {name_or_path!r}: not a name "
    f"({', '.join(NAMES)}), a config.json or a .py file"
  )


def run_name(config_source):
  """The name of runs/<name>, a run's default model dir: the config's name,
  or its module's file name without .py; 'custom' for a Config built in code."""
  if not config_source:
    return "custom"
  return os.path.splitext(os.path.basename(config_source))[0]


def from_argv(argv, default=DEFAULT):
  """The Config `--config` names in a raw argv (`default` when absent).

  Read before flags are defined, so its values can be their defaults (the
  trainer's and the benchmark's flags are generated from it).

  Raises:
    UserError: as get_config.
  """
  value = default
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      value = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
  return get_config(value)
