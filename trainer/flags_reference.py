"""`trainer.flags_reference` is `trainer.tools.flags_reference` (the commands live in trainer/tools/):
this alias keeps `python -m trainer.flags_reference` and `from trainer import flags_reference`."""

import sys

if __name__ == "__main__":
  import runpy

  runpy.run_module(
    "trainer.tools.flags_reference", run_name="__main__", alter_sys=True
  )
else:
  from trainer.tools import flags_reference

  sys.modules[__name__] = flags_reference
