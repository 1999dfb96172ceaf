"""`trainer.predict` is `trainer.tools.predict` (the commands live in trainer/tools/):
this alias keeps `python -m trainer.predict` and `from trainer import predict`."""

import sys

if __name__ == "__main__":
  import runpy

  runpy.run_module("trainer.tools.predict", run_name="__main__", alter_sys=True)
else:
  from trainer.tools import predict

  sys.modules[__name__] = predict
