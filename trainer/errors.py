"""The error type for problems the user can fix (bad flag, file or value)."""


class UserError(Exception):
  """A one-line, actionable error; the CLI prints it without a traceback."""
