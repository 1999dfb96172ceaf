"""The trainer's flags, parsed on this machine the way `trainer.task` will.

Launchers hand the flags after `--` to `python -m trainer.task` on another
machine. Parsing them here, with the same generated flags and named configs,
turns a typo (`--epocs=3`, `--strategy=gpus`) into a one-line error before
anything is built, uploaded or submitted, and tells the launcher what the
trainer will really run (`--strategy tpu` and `--strategy=tpu` alike).

Never imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

from absl import flags

import configs
from trainer import config as config_lib
from trainer.errors import UserError


@dataclasses.dataclass(frozen=True)
class TrainerFlags:
  """What the trainer will see.

  Attributes:
    config_name: the --config experiment the flags start from.
    config: the resolved `Config`.
    given: names of the flags set on the command line (the rest are the
      named config's defaults).
  """

  config_name: str
  config: config_lib.Config
  given: frozenset


def _parse(flag_values, args, known_only=False):
  try:
    return flag_values(["trainer.task", *args], known_only=known_only)
  except flags.Error as e:
    raise UserError(f"trainer flags: {' '.join(str(e).split())}") from None


def parse(args: Sequence[str]) -> TrainerFlags:
  """Parses trainer command-line flags into the trainer's `Config`.

  Args:
    args: the flags as `python -m trainer.task` will receive them.

  Returns:
    A `TrainerFlags`.

  Raises:
    UserError: one line naming the flag or value the trainer would reject.
  """
  # --config picks the defaults of every other flag (and is one of them),
  # so read it first, exactly as trainer.task does.
  try:
    defaults = configs.from_argv(args)
  except UserError as e:
    raise UserError(f"trainer flags: --config: {e}") from None
  flag_values = flags.FlagValues()
  config_lib.define_flags(flag_values, defaults)
  leftover = _parse(flag_values, args)[1:]
  if leftover:
    raise UserError(
      f"trainer flags: unexpected argument(s) {leftover}; "
      "flags look like --name=value"
    )
  try:
    config = config_lib.from_flags(flag_values)
  except UserError as e:
    raise UserError(f"trainer flags: {e}") from None
  given = frozenset(name for name in flag_values if flag_values[name].present)
  return TrainerFlags(
    defaults.config, config.replace(config=defaults.config), given
  )
