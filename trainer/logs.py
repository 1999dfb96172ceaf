"""The trainer's one output channel: the `trainer` logger (train, data,
synthetic, ... log to its children), sent by `report_to_stdout` to stdout as
plain lines, each flushed. Only the chief's lines appear, except the few
every worker says (extra=EVERY_WORKER: the banner, the Finished line)."""

import logging
import sys

log = logging.getLogger("trainer")
EVERY_WORKER = {"every_worker": True}


class _ChiefOnly(logging.Filter):
  def __init__(self, is_chief):
    super().__init__()
    self.is_chief = is_chief

  def filter(self, record):
    return self.is_chief or getattr(record, "every_worker", False)


def report_to_stdout(is_chief=True):
  """Sends the trainer's messages to stdout (idempotent; on non-chief
  workers, only the lines every worker says)."""
  handler = next(
    (h for h in log.handlers if getattr(h, "alexnet_stdout", False)), None
  )
  if handler is None:
    handler = logging.StreamHandler(sys.stdout)  # Flushes every line.
    handler.alexnet_stdout = True
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # Not again through absl's stderr handler.
  handler.filters = [_ChiefOnly(is_chief)]
