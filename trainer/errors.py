"""How the CLIs report failure: the error type for problems the user can fix
(bad flag, file or value) and the exit codes."""

USAGE_EXIT_CODE = 2      # A bad flag: absl's and argparse's convention.
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL, "try again": the run resumes.


class UserError(Exception):
  """A one-line, actionable error; the CLI prints it without a traceback."""


def describe(error):
  """The first meaningful line of an exception, TensorFlow's noise removed."""
  import re  # pylint: disable=g-import-not-at-top
  text = getattr(error, "message", None) or str(error)
  text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)
  lines = [l.strip() for l in text.strip().splitlines()
           if l.strip() and not l.strip().startswith((
               "Graph execution error", "Detected at node", "File \"",
               "Traceback"))
           and not l.startswith(" ")]
  if not lines:
    return type(error).__name__
  return re.sub(r"\s*\[Op:\w+\]$", "", lines[0])
