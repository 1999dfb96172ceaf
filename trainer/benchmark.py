"""`trainer.benchmark` is `trainer.tools.benchmark` (the commands live in trainer/tools/):
this alias keeps `python -m trainer.benchmark` and `from trainer import benchmark`."""

import sys

if __name__ == "__main__":
  import runpy

  runpy.run_module(
    "trainer.tools.benchmark", run_name="__main__", alter_sys=True
  )
else:
  from trainer.tools import benchmark

  sys.modules[__name__] = benchmark
