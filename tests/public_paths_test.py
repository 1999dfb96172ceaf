"""Every command users type and every import the docs, the notebook and user
code use today keeps working after the code moved: the commands through
their `trainer.NAME` aliases, the library through the same module names."""

import subprocess
import sys

from conftest import REPO
from conftest import cli_env
import pytest

pytestmark = pytest.mark.multiprocess

# `python -m MODULE --help`: what each prints first in its flags list.
COMMANDS = {
  "trainer.task": "--strategy",
  "trainer.prepare": "--source",
  "trainer.evaluate": "--model_dir",
  "trainer.predict": "--json",
  "trainer.export": "--quantize",
  "trainer.benchmark": "--steps",
  "trainer.doctor": "--expect",
  "trainer.tools.evaluate": "--model_dir",
  "launch.local": "--workers",
  "launch.vertex": "--region",
  "launch.colab": "--out",
}

# Names user code and the notebook import, by module.
IMPORTS = {
  "trainer.train": ["train", "Trainer", "TrainingError", "requests_vector"],
  "trainer.config": ["Config", "validate", "define_flags"],
  "trainer.data": ["make_train_dataset", "make_eval_dataset", "InputSpec"],
  "trainer.model": ["build_model", "portable_copy"],
  "trainer.evaluation": ["evaluate", "make_eval_call"],
  "trainer.strategy": ["set_up", "distribute_datasets"],
  "trainer.outputs": ["RunDir", "RunWriter", "read_metrics"],
  "trainer.serving": ["export"],
  "trainer.plots": ["plot_run"],
  "trainer.evaluate": ["main", "format_table"],
  "trainer.export": ["main", "run"],
  "trainer.predict": ["main"],
  "trainer.prepare": ["main"],
  "trainer.doctor": ["main", "diagnose"],
  "trainer.benchmark": ["main", "PHASES"],
  "trainer.flags_reference": ["main"],
  "launch.vertex": ["default_options", "validate"],
  "launch.local": ["check_trainer_flags"],
  "configs": ["get_config"],
}


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_every_command_still_runs(module, cache_dir):
  result = subprocess.run(
    [sys.executable, "-m", module, "--help"],
    cwd=REPO,
    env=cli_env(cache_dir),
    capture_output=True,
    text=True,
    timeout=120,
  )
  # absl prints the usage and exits 1 on --help.
  assert "Try --helpfull" in result.stdout, result.stderr[-2000:]
  assert COMMANDS[module] in result.stdout


def _imports(modules):
  """A script importing `modules` and checking their names."""
  lines = []
  for index, module in enumerate(modules):
    parent, _, leaf = module.rpartition(".")
    alias = f"m{index}"
    lines.append(
      f"from {parent} import {leaf} as {alias}"
      if parent
      else f"import {module} as {alias}"
    )
    lines += [
      f"assert hasattr({alias}, {name!r}), ({module!r}, {name!r})"
      for name in IMPORTS[module]
    ]
  return "\n".join(lines)


def test_every_public_import_still_works(cache_dir):
  """The library in one interpreter; each command module in its own (they
  define absl flags at import, as they always did: two would clash)."""
  library = [m for m in IMPORTS if m not in COMMANDS]
  groups = [library] + [[m] for m in IMPORTS if m in COMMANDS]
  for modules in groups:
    result = subprocess.run(
      [sys.executable, "-c", _imports(modules)],
      cwd=REPO,
      env=cli_env(cache_dir),
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert result.returncode == 0, f"{modules}: {result.stderr[-1500:]}"
