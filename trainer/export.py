"""`trainer.export` is `trainer.tools.export` (the commands live in trainer/tools/):
this alias keeps `python -m trainer.export` and `from trainer import export`."""

import sys

if __name__ == "__main__":
  import runpy

  runpy.run_module("trainer.tools.export", run_name="__main__", alter_sys=True)
else:
  from trainer.tools import export

  sys.modules[__name__] = export
