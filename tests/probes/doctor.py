"""Probes of trainer.doctor, which defines absl flags when imported."""

import json
import sys

from trainer import doctor as doctor_lib


def table_of_stdin():
  """Prints doctor.format_table of the JSON report on stdin."""
  print(doctor_lib.format_table(json.load(sys.stdin)))
