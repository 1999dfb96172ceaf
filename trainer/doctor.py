"""`trainer.doctor` is `trainer.tools.doctor` (the commands live in trainer/tools/):
this alias keeps `python -m trainer.doctor` and `from trainer import doctor`."""

import sys

if __name__ == "__main__":
  import runpy

  runpy.run_module("trainer.tools.doctor", run_name="__main__", alter_sys=True)
else:
  from trainer.tools import doctor

  sys.modules[__name__] = doctor
