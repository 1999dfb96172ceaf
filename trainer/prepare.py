"""`trainer.prepare` is `trainer.tools.prepare` (the commands live in trainer/tools/):
this alias keeps `python -m trainer.prepare` and `from trainer import prepare`."""

import sys

if __name__ == "__main__":
  import runpy

  runpy.run_module("trainer.tools.prepare", run_name="__main__", alter_sys=True)
else:
  from trainer.tools import prepare

  sys.modules[__name__] = prepare
