"""`trainer.evaluate` is `trainer.tools.evaluate` (the commands live in trainer/tools/):
this alias keeps `python -m trainer.evaluate` and `from trainer import evaluate`."""

import sys

if __name__ == "__main__":
  import runpy

  runpy.run_module(
    "trainer.tools.evaluate", run_name="__main__", alter_sys=True
  )
else:
  from trainer.tools import evaluate

  sys.modules[__name__] = evaluate
