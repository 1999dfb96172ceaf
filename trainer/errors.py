"""How the command-line tools report failure: the error type for problems
the user can fix (bad flag, file or value) and the exit codes."""

import sys

USAGE_EXIT_CODE = 2  # a bad flag or flag value; other user errors exit 1
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL, "try again": the run resumes.
# EX_UNAVAILABLE: storage or a peer stopped answering. The run resumes when
# run again too, but an orchestrator counts it as a failure (a worker that
# crashes for good leaves its peers unanswered: restarting them uncounted,
# as after a preemption, would loop forever).
UNANSWERED_EXIT_CODE = 69


class UserError(Exception):
  """A one-line, actionable error; the CLI prints it without a traceback."""


class UsageError(UserError):
  """A bad flag value found past the flag parser (e.g. a layer name only the
  built model knows); the CLI exits with USAGE_EXIT_CODE."""


class TrainingError(UserError):
  """Training cannot go on (NaN loss, bad data); the message says where."""


class Unanswered(TrainingError):
  """Storage or another worker stopped answering after TensorFlow's own
  retries: nothing is wrong with the data, so the run exits with
  UNANSWERED_EXIT_CODE and resumes when run again (Vertex AI and JobSet
  restarts do that)."""


def unanswered(error):
  """Whether `error` (a TensorFlow OpError) means storage or a peer stopped
  answering, past TensorFlow's own retries: Unavailable, DeadlineExceeded,
  or the GCS client's "All N retry attempts failed" (an Aborted)."""
  name = type(error).__name__
  if name in ("UnavailableError", "DeadlineExceededError"):
    return True
  return name == "AbortedError" and "retry attempts failed" in str(error)


def unanswered_message(error, resumes=True):
  return (
    f"{describe(error)}: storage or another worker stopped answering "
    "(after TensorFlow's retries; the data is not damaged); run the same "
    "command again"
    + (": it resumes from the last checkpoint" if resumes else "")
  )


def describe(error):
  """The first meaningful line of an exception, TensorFlow's noise removed."""
  import re

  text = getattr(error, "message", None) or str(error)
  text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)
  lines = [
    l.strip()
    for l in text.strip().splitlines()
    if l.strip()
    and not l.strip().startswith(
      ("Graph execution error", "Detected at node", "File \"", "Traceback")
    )
    and not l.startswith(" ")
  ]
  if not lines:
    return type(error).__name__
  return re.sub(r"\s*\[Op:\w+\]$", "", lines[0])


def parse_flags(argv):
  """absl's flags_parser for the CLIs: a bad flag or value is one usage line
  (absl names the flag and, for enums, the valid values) and exit 2."""
  from absl import flags

  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(
      f"Usage error: {e}\nRun with --helpshort for the flags.", file=sys.stderr
    )
    sys.exit(USAGE_EXIT_CODE)
