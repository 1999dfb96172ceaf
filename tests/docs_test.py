"""The docs site's generated page: docs/reference/flags.md equals what
trainer.flags_reference makes of this checkout's Config and named configs.

In-process and cheap: the generator is pure Python (no TensorFlow, no absl).
"""

import dataclasses
import os

from conftest import REPO

from trainer import flags_reference


def _committed_page():
  with open(
    os.path.join(REPO, flags_reference.PAGE_PATH), encoding="utf-8"
  ) as f:
    return f.read()


def test_flags_page_is_current():
  stale = flags_reference.difference(flags_reference.page(), _committed_page())
  assert stale is None, (
    f"{flags_reference.PAGE_PATH} is out of date ({stale}); regenerate it "
    f"from the repository root: {flags_reference.REGENERATE_COMMAND}"
  )


def test_page_lists_every_field_once_with_its_named_config_values():
  page = flags_reference.page()
  for flag in flags_reference.config_flags():
    assert page.count(f"| `--{flag.name}` |") == 1, flag.name
  # configs/imagenet_paper.py sets SGD; the row says so.
  optimizer_row = next(
    line for line in page.splitlines() if line.startswith("| `--optimizer` |")
  )
  assert optimizer_row.endswith("| `imagenet_paper`: `sgd` |")


# Negative controls: the staleness check reports a planted difference.


def test_staleness_check_catches_a_changed_help_text():
  flags = flags_reference.config_flags()
  changes = flags_reference.named_config_changes()
  flags[1] = dataclasses.replace(flags[1], help="A help text nobody wrote.")
  planted = flags_reference.render(flags, changes)
  stale = flags_reference.difference(planted, _committed_page())
  assert stale is not None and "A help text nobody wrote." in stale


def test_staleness_check_catches_a_changed_named_config():
  changes = flags_reference.named_config_changes()
  changes["epochs"] = changes["epochs"] + [("extra", 7)]
  planted = flags_reference.render(flags_reference.config_flags(), changes)
  stale = flags_reference.difference(planted, _committed_page())
  assert stale is not None and "`extra`: `7`" in stale


def test_staleness_check_catches_a_truncated_page():
  stale = flags_reference.difference(
    flags_reference.page(), _committed_page().rsplit("\n", 3)[0] + "\n"
  )
  assert stale is not None and "lines" in stale
