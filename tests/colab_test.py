"""launch.colab: a valid notebook whose cells run end to end on a local kernel.

The kernel runs in a venv layered on the test environment (its TensorFlow
included) but installs into its own directory, so the notebook's pip install
runs for real without changing the shared environment.
"""

import json
import os
import subprocess
import sys

from conftest import REPO
from conftest import cli_env
from layered_venv import LayeredVenv
import nbformat
import pytest

# Small enough for seconds: 48 px synthetic stripes, 64 + 32 images.
SMALL_SYNTHETIC = [
  "--prepare_flag=--synthetic_examples=64,32",
  "--prepare_flag=--synthetic_size=48",
]


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
  return LayeredVenv(tmp_path_factory.mktemp("colab") / "venv")


@pytest.fixture
def kernel_env(venv, tmp_path, cache_dir, monkeypatch):
  """A kernel named 'alexnet-venv' on the venv's python; offline pip."""
  kernels = tmp_path / "jupyter" / "kernels" / "alexnet-venv"
  kernels.mkdir(parents=True)
  (kernels / "kernel.json").write_text(
    json.dumps(
      {
        "argv": [
          venv.python,
          "-m",
          "ipykernel_launcher",
          "-f",
          "{connection_file}",
        ],
        "display_name": "alexnet venv",
        "language": "python",
      }
    )
  )
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  for key, value in cli_env(cache_dir).items():
    if key in ("XDG_CACHE_HOME", "TF_CPP_MIN_LOG_LEVEL", "PYTHONPATH"):
      monkeypatch.setenv(key, value)
  # Everything the package needs is already here: pip must not fetch anything
  # (and builds the editable install with this machine's setuptools).
  monkeypatch.setenv("PIP_NO_INDEX", "1")
  monkeypatch.setenv("PIP_NO_BUILD_ISOLATION", "0")
  return venv


def write_notebook(tmp_path, *args):
  path = tmp_path / "train.ipynb"
  result = subprocess.run(
    [sys.executable, "-m", "launch.colab", f"--out={path}", *args],
    cwd=REPO,
    env=cli_env("/tmp"),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  return notebook


def execute(notebook, tmp_path, upto=None):
  """Runs the code cells (those before the one starting with `upto`)."""
  from nbclient import NotebookClient

  client = NotebookClient(
    notebook,
    timeout=600,
    kernel_name="alexnet-venv",
    resources={"metadata": {"path": str(tmp_path)}},
  )
  with client.setup_kernel():
    for index, cell in enumerate(notebook.cells):
      if upto and cell.source.startswith(upto):
        break
      if cell.cell_type == "code":
        client.execute_cell(cell, index)
  return "".join(
    o.get("text", "")
    for cell in notebook.cells
    if cell.cell_type == "code"
    for o in cell.get("outputs", [])
  )


@pytest.mark.notebook
def test_notebook_installs_prepares_data_and_trains_end_to_end(
  kernel_env, tmp_path
):
  # The data directory is a hostile string: it must arrive as one literal
  # path in trainer.prepare and trainer.task, never reach a shell.
  hostile = tmp_path / "a; touch pwned; echo {x} $HOME"
  notebook = write_notebook(
    tmp_path,
    f"--install={REPO}",
    "--editable",
    "--data=synthetic",
    *SMALL_SYNTHETIC,
    f"--data_dir={hostile}",
    f"--model_dir={tmp_path / 'run'}",
    "--",
    "--config=tiny",
    "--epochs=1",
  )
  text = execute(notebook, tmp_path)
  outputs = [
    o
    for cell in notebook.cells
    if cell.cell_type == "code"
    for o in cell.get("outputs", [])
  ]
  assert "Runtime: CPU" in text
  assert "--require_accelerator" not in text  # a CPU runtime requires nothing
  shards = hostile / "synthetic"
  assert {p.name.split("-")[0] for p in shards.glob("*-of-*")} == {
    "train",
    "validation",
  }
  assert not (tmp_path / "pwned").exists()
  # The trainer read those shards, not its built-in synthetic set.
  config = json.loads((tmp_path / "run" / "config.json").read_text())
  assert config["train_data"] == f"{shards}/train-*"
  assert config["eval_data"] == f"{shards}/validation-*"
  assert "epoch 1/1" in text
  metrics = [
    json.loads(l)
    for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  ]
  assert metrics[0]["epoch"] == 1 and "val_accuracy" in metrics[0]
  assert any("image/png" in o.get("data", {}) for o in outputs)  # the curves
  assert "tensorboard --logdir" in text
  # The install went into the venv and left the runtime's TensorFlow alone.
  import importlib.metadata

  assert (
    f"TensorFlow: this runtime's {importlib.metadata.version('tensorflow')}"
    " (kept)"
  ) in text
  keeping = next(l for l in text.splitlines() if l.startswith("Keeping "))
  assert f"tensorflow {importlib.metadata.version('tensorflow')}" in keeping
  assert [
    n for n in os.listdir(kernel_env.site_packages) if n.startswith("alexnet")
  ]
  own = kernel_env.own_distributions()
  assert not [
    n for n in own if n.startswith(("tensorflow", "keras", "tensorboard"))
  ], own


def _skip_install(notebook):
  """Keeps the install cell's run() helper, drops its pip install."""
  from launch.colab import RUN_HELPER

  install = next(c for c in notebook.cells if c.source.startswith("# Install"))
  install.source = RUN_HELPER
  return notebook


@pytest.mark.notebook
def test_gpu_runtime_requires_the_gpu_and_data_picks_the_seed_config(
  kernel_env, tmp_path, monkeypatch
):
  # A stand-in nvidia-smi that lists one GPU: the notebook's detection runs
  # for real; the cells up to the trainer flags run, the trainer does not.
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "nvidia-smi").write_text(
    "#!/bin/sh\necho 'GPU 0: Tesla T4 (UUID: GPU-0)'\n"
  )
  (bin_dir / "nvidia-smi").chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  notebook = _skip_install(
    write_notebook(
      tmp_path,
      f"--install={REPO}",
      "--data=synthetic",
      *SMALL_SYNTHETIC,
      f"--data_dir={tmp_path / 'data'}",
    )
  )
  text = execute(notebook, tmp_path, upto="# Train.")
  assert "Runtime: GPU: GPU 0: Tesla T4" in text
  command = next(
    l for l in text.splitlines() if l.startswith("python -m trainer.task")
  )
  shards = tmp_path / "data" / "synthetic"
  assert command.split()[3:] == [
    "--config=cats_vs_dogs",
    "--model_dir=/content/runs/colab",
    f"--train_data={shards}/train-*",
    f"--eval_data={shards}/validation-*",
    "--require_accelerator=gpu",
  ]


@pytest.mark.notebook
def test_remote_tpu_without_a_gcs_data_dir_says_what_to_set(
  kernel_env, tmp_path, monkeypatch
):
  monkeypatch.setenv("COLAB_TPU_ADDR", "10.0.0.2:8470")
  notebook = _skip_install(
    write_notebook(tmp_path, f"--install={REPO}", "--data=tfds:cats_vs_dogs")
  )
  from nbclient.exceptions import CellExecutionError

  with pytest.raises(CellExecutionError, match="set GCS_DATA_DIR"):
    execute(notebook, tmp_path, upto="# Trainer flags.")
  runtime = next(c for c in notebook.cells if c.source.startswith("# Runtime"))
  assert "Runtime: TPU" in "".join(o.get("text", "") for o in runtime.outputs)


@pytest.mark.notebook
def test_without_data_the_trainer_gets_the_given_flags(kernel_env, tmp_path):
  notebook = _skip_install(
    write_notebook(
      tmp_path, f"--install={REPO}", "--", "--strategy=auto", "--epochs=20"
    )
  )
  assert not [c for c in notebook.cells if c.source.startswith("# Data")]
  text = execute(notebook, tmp_path, upto="# Train.")
  command = next(
    l for l in text.splitlines() if l.startswith("python -m trainer.task")
  )
  assert command.split()[3:] == [
    "--strategy=auto",
    "--epochs=20",
    "--model_dir=/content/runs/colab",
  ]


def test_a_model_dir_given_with_a_space_is_the_one_used(tmp_path):
  from launch import colab

  args, model_dir = colab.notebook_trainer_args(
    ["--model_dir", "gs://b/run"], "", "/content/runs/colab"
  )
  assert args == ["--model_dir", "gs://b/run"] and model_dir == "gs://b/run"
  args, model_dir = colab.notebook_trainer_args(
    [], "synthetic", "/content/runs/colab"
  )
  assert args == ["--config=cats_vs_dogs", "--model_dir=/content/runs/colab"]
  assert model_dir == "/content/runs/colab"


@pytest.mark.multiprocess
@pytest.mark.parametrize(
  "args,fragment",
  [
    (["--", "--epocs=3"], "epocs"),
    (["--", "--strategy=gpus"], "--strategy=gpus"),
    (
      ["--data=synthetic", "--", "--train_data=/x/train-*"],
      "drop the trainer flag --train_data",
    ),
    (
      ["--gcs_data_dir=/local/dir", "--data=synthetic"],
      "--gcs_data_dir must be a gs:// path",
    ),
  ],
)
def test_bad_flags_fail_when_the_notebook_is_written(tmp_path, args, fragment):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.colab",
      f"--out={tmp_path / 'x.ipynb'}",
      f"--install={REPO}",
      *args,
    ],
    cwd=REPO,
    env=cli_env("/tmp"),
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.returncode == 2
  assert (
    fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
  )
  assert not (tmp_path / "x.ipynb").exists()


@pytest.mark.multiprocess
def test_install_is_required(tmp_path):
  result = subprocess.run(
    [sys.executable, "-m", "launch.colab", f"--out={tmp_path / 'x.ipynb'}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.returncode == 2 and "--install is required" in result.stderr


@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
  """`python -m pip` in the kernel records its arguments (one JSON list a
  line) and installs nothing; returns the log's path."""
  package = tmp_path / "fake_pip" / "pip"
  package.mkdir(parents=True)
  (package / "__init__.py").write_text("")
  (package / "__main__.py").write_text(
    "import json, os, sys\n"
    "with open(os.environ['FAKE_PIP_LOG'], 'a') as f:\n"
    "  f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
  )
  log = tmp_path / "pip.log"
  monkeypatch.setenv("FAKE_PIP_LOG", str(log))
  monkeypatch.setenv(
    "PYTHONPATH",
    os.pathsep.join([str(package.parent), os.environ.get("PYTHONPATH", "")]),
  )
  return log


@pytest.mark.notebook
def test_tpu_runtime_installs_the_pinned_tensorflow_tpu_first(
  kernel_env, tmp_path, monkeypatch, fake_pip
):
  """Colab's TPU runtimes bring no TensorFlow: the install cell asks pip for
  the table's tensorflow-tpu and libtpu, before the package."""
  from launch import platforms

  monkeypatch.setenv("COLAB_TPU_ADDR", "10.0.0.2:8470")
  notebook = write_notebook(
    tmp_path, f"--install={REPO}", "--", "--strategy=tpu"
  )
  text = execute(notebook, tmp_path, upto="# Trainer flags.")
  stack = platforms.TPU_STACK
  assert (
    f"This TPU runtime has no TensorFlow: installing tensorflow-tpu=="
    f"{stack.tensorflow_tpu} libtpu=={stack.libtpu}"
  ) in text
  calls = [json.loads(l) for l in fake_pip.read_text().splitlines()]
  # This kernel's environment holds the CPU wheel (a TPU runtime holds
  # none): it goes first, as the two own the same files.
  assert calls[0] == ["uninstall", "-q", "-y", "tensorflow"]
  assert calls[1] == [
    "install",
    "-q",
    f"tensorflow-tpu=={stack.tensorflow_tpu}",
    f"libtpu=={stack.libtpu}",
  ]
  assert calls[2] == ["install", "-q", "--no-deps", REPO]


@pytest.mark.notebook
def test_a_runtime_tensorflow_outside_the_range_is_replaced(
  kernel_env, tmp_path, fake_pip
):
  """A CPU runtime whose TensorFlow is outside 2.17-2.21 gets one inside;
  the negative control of "kept" in the end-to-end test above."""
  notebook = write_notebook(tmp_path, f"--install={REPO}")
  install = next(c for c in notebook.cells if c.source.startswith("# Install"))
  install.source = install.source.replace(
    "found = installed('tensorflow')", "found = '2.16.2'"
  )
  text = execute(notebook, tmp_path, upto="# Trainer flags.")
  assert (
    "TensorFlow: this runtime has 2.16.2 - installing tensorflow>=2.17,<2.22"
  ) in text
  calls = [json.loads(l) for l in fake_pip.read_text().splitlines()]
  assert calls[0] == ["install", "-q", "tensorflow>=2.17,<2.22"]
