"""Probes of another environment's interpreter (run with `python -I`: only
the standard library and that environment's packages)."""

import importlib.metadata
import json


def list_distributions():
  """Prints {name: {"version", "requires"}} of every installed distribution."""
  print(
    json.dumps(
      {
        d.metadata["Name"]: {"version": d.version, "requires": d.requires or []}
        for d in importlib.metadata.distributions()
      }
    )
  )
