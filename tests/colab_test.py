"""launch.colab: a valid notebook whose cells run end to end on a local kernel."""

import json
import os
import subprocess
import sys

import nbformat

from conftest import REPO, cli_env


def test_notebook_is_valid_and_runs_end_to_end(tmp_path, cache_dir):
  hostile = tmp_path / "a; touch pwned; echo {x} $HOME"
  notebook_path = tmp_path / "train.ipynb"
  result = subprocess.run(
      [sys.executable, "-m", "launch.colab", f"--out={notebook_path}",
       f"--install={REPO}", "--editable", f"--model_dir={tmp_path / 'run'}", "--",
       "--config=tiny", "--epochs=1", f"--synthetic_dir={hostile}"],
      cwd=REPO, env=cli_env(cache_dir), capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  notebook = nbformat.read(notebook_path, as_version=4)
  nbformat.validate(notebook)

  from nbclient import NotebookClient
  os.environ.update({k: v for k, v in cli_env(cache_dir).items()
                     if k in ("XDG_CACHE_HOME", "TF_CPP_MIN_LOG_LEVEL")})
  client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code"
             for o in cell.get("outputs", [])]
  text = "".join(o.get("text", "") for o in outputs)
  assert "Runtime: CPU" in text
  assert "epoch 1/1" in text
  assert any("image/png" in o.get("data", {}) for o in outputs)  # the curves
  assert "tensorboard --logdir" in text
  # The hostile value arrived as one literal path; nothing ran.
  assert hostile.is_dir() and list(hostile.iterdir())
  assert not (tmp_path / "pwned").exists()
  metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  assert json.loads(metrics[0])["epoch"] == 1


def test_install_is_required(tmp_path):
  result = subprocess.run([sys.executable, "-m", "launch.colab",
                           f"--out={tmp_path / 'x.ipynb'}"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 2 and "--install is required" in result.stderr
