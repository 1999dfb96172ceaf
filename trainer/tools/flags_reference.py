"""The flags reference page, generated from `Config`.

    python -m trainer.flags_reference > docs/reference/flags.md
    python -m trainer.flags_reference --write     # the same, from the repo root

Every field of `trainer.config.Config` is a flag of `python -m trainer.task`;
its type, default, help, choices, minimum and section live in the field. This
module turns them into docs/reference/flags.md: one table per section, plus
what each named config in `configs/` sets differently. The page is never
edited by hand; tests/docs_test.py fails when the committed page and this
module's output differ.

Pure Python: imports neither TensorFlow nor absl.
"""

import dataclasses
import sys

import configs
from trainer import config as config_lib

# Where the page lives, relative to the repository root (mkdocs' docs_dir is
# docs/).
PAGE_PATH = "docs/reference/flags.md"
REGENERATE_COMMAND = "python -m trainer.flags_reference --write"


@dataclasses.dataclass(frozen=True)
class Flag:
  """What the page says about one Config field.

  Attributes:
    name: the field, and the flag without its dashes.
    type_name: "str", "int", "float" or "bool".
    default: the value of `Config()`, the defaults before --config applies
      (for `config` itself, the named config the flag defaults to).
    help: the field's help text.
    choices: the valid values, or None.
    minimum: the smallest valid value, or None.
    section: the heading the flag is listed under.
  """

  name: str
  type_name: str
  default: object
  help: str
  choices: tuple | None = None
  minimum: object = None
  section: str = "Training"


def config_flags():
  """Every Config field as a `Flag`, in the order Config declares them."""
  defaults = config_lib.Config()
  # Config() leaves `config` empty (a Config built in code); the flag
  # defaults to configs.DEFAULT, so the page says what a user gets.
  defaults = defaults.replace(config=configs.DEFAULT)
  return [
    Flag(
      name=field.name,
      type_name=getattr(field.type, "__name__", str(field.type)),
      default=getattr(defaults, field.name),
      help=field.metadata["help"],
      choices=field.metadata["choices"],
      minimum=field.metadata["minimum"],
      section=field.metadata["section"],
    )
    for field in config_lib.fields()
  ]


def named_config_changes(names=configs.NAMES):
  """What each named config sets differently from `Config()`.

  Args:
    names: the named configs to compare, in the order to list them.

  Returns:
    {field name: [(config name, value), ...]}, fields no named config changes
    left out. The `config` field is left out too: every named config sets it
    to its own name.
  """
  defaults = config_lib.Config()
  changes = {}
  for name in names:
    named = configs.get_config(name)
    for field in config_lib.fields():
      value = getattr(named, field.name)
      if field.name != "config" and value != getattr(defaults, field.name):
        changes.setdefault(field.name, []).append((name, value))
  return changes


def _value(value):
  """A value as the flag takes it, in a code span."""
  if isinstance(value, bool):
    return "`true`" if value else "`false`"
  if value == "":
    return "empty"
  return f"`{value}`"


def _text(text):
  """Help text made safe for one Markdown table cell (GitHub and MkDocs)."""
  for plain, escaped in (
    ("\\", "\\\\"),
    ("|", "\\|"),
    ("*", "\\*"),
    ("<", "&lt;"),
    (">", "&gt;"),
  ):
    text = text.replace(plain, escaped)
  return " ".join(text.split())


def _valid_values(flag):
  if flag.choices:
    return ", ".join(_value(choice) for choice in flag.choices)
  if flag.minimum is not None:
    return f">= {flag.minimum}"
  return ""


def render(flags, changes):
  """The page's Markdown.

  Args:
    flags: `Flag`s, in page order; sections appear in the order their first
      flag does.
    changes: as `named_config_changes()` returns.

  Returns:
    The page, ending with a newline.
  """
  lines = [
    "# Flags",
    "",
    "<!-- Generated from trainer/config.py by "
    f"`{REGENERATE_COMMAND}`; do not edit. -->",
    "",
    "Every field of `Config` (`trainer/config.py`) is a flag of "
    "`python -m trainer.task`, and a key of the `config.json` a run writes. "
    "The defaults below are `Config()`'s, which every named config starts "
    "from; the named config `--config` picks (`" + configs.DEFAULT + "` "
    "when none is given) replaces them with its values (the last column; "
    "the configs are described in "
    "[Configs and training recipes](../configs.md)), and a flag given on "
    "the command line replaces both. `python -m trainer.task --helpshort` "
    "prints the same flags with the defaults of the `--config` given.",
    "",
    "Valid values lists the choices or the minimum the field declares; "
    "`Config`'s `validate()` checks a few more ranges and formats (see the "
    "help text), and the [troubleshooting page](../troubleshooting.md) has "
    "the message each check prints.",
    "",
    f"Regenerate this page from the repository root with `{REGENERATE_COMMAND}`.",
  ]
  sections = []
  for flag in flags:
    if flag.section not in sections:
      sections.append(flag.section)
  for section in sections:
    lines += [
      "",
      f"## {section}",
      "",
      "| flag | type | default | help | valid values | named configs |",
      "| --- | --- | --- | --- | --- | --- |",
    ]
    for flag in flags:
      if flag.section != section:
        continue
      named = "; ".join(
        f"`{name}`: {_value(value)}"
        for name, value in changes.get(flag.name, [])
      )
      lines.append(
        f"| `--{flag.name}` | {flag.type_name} | "
        f"{_value(flag.default)} | {_text(flag.help)} | "
        f"{_valid_values(flag)} | {named} |"
      )
  return "\n".join(lines) + "\n"


def page():
  """The page as this checkout's Config and named configs describe it."""
  return render(config_flags(), named_config_changes())


def difference(expected, actual):
  """The first line where two versions of the page differ, or None.

  Args:
    expected: the page as generated.
    actual: the page as committed.

  Returns:
    One line naming the line number and both versions of it, or None when
    the texts are equal.
  """
  if expected == actual:
    return None
  expected_lines, actual_lines = expected.splitlines(), actual.splitlines()
  for number, (want, got) in enumerate(zip(expected_lines, actual_lines), 1):
    if want != got:
      return f"line {number}: generated {want!r}, committed {got!r}"
  shorter = min(len(expected_lines), len(actual_lines)) + 1
  return (
    f"line {shorter}: generated {len(expected_lines)} lines, committed "
    f"{len(actual_lines)}"
  )


def main(argv):
  """Prints the page, or with --write writes it to PAGE_PATH.

  Returns:
    The exit status: 0, or 2 for an unknown argument.
  """
  if argv[1:] not in ([], ["--write"]):
    print(
      f"Usage: python -m trainer.flags_reference [--write]\n"
      f"Unexpected arguments: {argv[1:]}",
      file=sys.stderr,
    )
    return 2
  text = page()
  if argv[1:] == ["--write"]:
    # Relative to the working directory, the repository root, like mkdocs.
    with open(PAGE_PATH, "w", encoding="utf-8") as f:
      f.write(text)
    print(f"Wrote {PAGE_PATH}")
  else:
    sys.stdout.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
