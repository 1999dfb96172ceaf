"""A launcher's options at their flag defaults, without parsing a command
line: for building and checking its requests as functions (tests,
notebooks). Defines no global flag."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from absl import flags


def options(
  define_flags: Callable[[flags.FlagValues], None],
  options_from_flags: Callable[[flags.FlagValues], dict[str, Any]],
  command: str,
  changes: dict[str, Any],
) -> dict[str, Any]:
  """`options_from_flags` of a fresh FlagValues that `define_flags` filled,
  plus `changes` (each must be one of the options).

  Raises:
    ValueError: a change that names no option of `command`.
  """
  flag_values = flags.FlagValues()
  define_flags(flag_values)
  flag_values.mark_as_parsed()
  out = options_from_flags(flag_values)
  unknown = set(changes) - set(out)
  if unknown:
    raise ValueError(f"not {command} options: {sorted(unknown)}")
  out.update(changes)
  return out
