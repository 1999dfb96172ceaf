"""Write a Colab notebook that trains: python -m launch.colab --out=NB.ipynb -- FLAGS

    python -m launch.colab --out=train_alexnet.ipynb -- --strategy=auto --epochs=20

The notebook installs this package (--install: a git URL, a gs:// sdist or a
local path), says which runtime it got (TPU VM, GPU, CPU), runs
`python -m trainer.task` with the trainer flags after `--`, then shows the
training curves and TensorBoard. Open it in Colab (File > Upload notebook)
and run all cells.

No cell runs a shell line: every value, the trainer flags included, is
written as a Python string literal and passed to subprocess as an argument
list, so a value like `x; rm -rf /` arrives as that literal string and
IPython's `!`/`{}`/`$` expansion never sees it.

Never imports TensorFlow.
"""

import os

from absl import app
from absl import flags
import nbformat
from nbformat import v4

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "train_alexnet.ipynb", "Notebook to write.")
flags.DEFINE_string("install", None, "What the notebook pip-installs: a git "
                    "URL (git+https://...), a gs:// sdist (as launch.vertex "
                    "uploads; copied with gcloud first) or a local path.")
flags.DEFINE_bool("editable", False, "Install a local path in editable mode.")
flags.DEFINE_string("model_dir", "/content/runs/colab", "The run's model dir "
                    "(a gs:// path keeps it after the runtime ends).")
flags.DEFINE_bool("tensorboard", True, "Add the TensorBoard cell.")

RUN_HELPER = '''import subprocess, sys

def run(args):
    """Runs a command from an argument list (no shell), streaming its output."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        print(line, end="")
    if process.wait() != 0:
        raise RuntimeError(f"{args[:4]} exited with {process.returncode}")
'''


def install_source(install, editable):
  """Python source of the install cell."""
  lines = [RUN_HELPER, f"INSTALL = {install!r}"]
  if install.startswith("gs://"):
    lines += ["local_sdist = '/content/' + INSTALL.rsplit('/', 1)[-1]",
              "run(['gcloud', 'storage', 'cp', INSTALL, local_sdist])",
              "INSTALL = local_sdist"]
  pip = ["sys.executable", "'-m'", "'pip'", "'install'", "'-q'"]
  if editable:
    pip.append("'-e'")
  lines.append(f"run([{', '.join(pip)}, INSTALL])")
  return "\n".join(lines)


RUNTIME_SOURCE = '''import glob, os, shutil, subprocess
if glob.glob('/dev/accel*') or os.environ.get('COLAB_TPU_ADDR'):
    runtime = 'TPU'
elif shutil.which('nvidia-smi') and subprocess.run(['nvidia-smi', '-L'], capture_output=True).returncode == 0:
    runtime = 'GPU: ' + subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True).stdout.strip()
else:
    runtime = 'CPU'
print('Runtime:', runtime, '- the trainer picks its strategy and precision from it (--strategy=auto).')
'''


def train_source(trainer_args, model_dir):
  args = list(trainer_args)
  if not any(a.startswith("--model_dir=") for a in args):
    args.append(f"--model_dir={model_dir}")
  return "\n".join([
      f"TRAINER_FLAGS = {args!r}",
      "MODEL_DIR = next(a.split('=', 1)[1] for a in TRAINER_FLAGS "
      "if a.startswith('--model_dir='))",
      "run([sys.executable, '-m', 'trainer.task', *TRAINER_FLAGS])",
  ])


CURVES_SOURCE = '''import os
from IPython.display import Image, display
run([sys.executable, '-m', 'trainer.plots', MODEL_DIR])
curves = os.path.join(MODEL_DIR, 'training_curves.png')
if MODEL_DIR.startswith('gs://'):
    run(['gcloud', 'storage', 'cp', curves, '/content/training_curves.png'])
    curves = '/content/training_curves.png'
display(Image(filename=curves))
'''

TENSORBOARD_SOURCE = '''# TensorBoard inside the notebook (Colab). Elsewhere: tensorboard --logdir MODEL_DIR/logs
if 'google.colab' in sys.modules:
    get_ipython().run_line_magic('load_ext', 'tensorboard')
    get_ipython().run_line_magic('tensorboard', '--logdir ' + repr(os.path.join(MODEL_DIR, 'logs')))
else:
    print('Run: tensorboard --logdir', os.path.join(MODEL_DIR, 'logs'))
'''


def build_notebook(trainer_args, install, editable=False,
                   model_dir="/content/runs/colab", tensorboard=True):
  """The notebook as an nbformat NotebookNode."""
  cells = [
      v4.new_markdown_cell(
          "# Train AlexNet\n\nInstalls `alexnet-tf`, detects the runtime "
          "(TPU, GPU or CPU), trains with `python -m trainer.task`, then shows "
          "the training curves and TensorBoard.\n\nTrainer flags: `" +
          " ".join(trainer_args).replace("`", "'") + "`"),
      v4.new_code_cell(install_source(install, editable)),
      v4.new_code_cell(RUNTIME_SOURCE),
      v4.new_code_cell(train_source(trainer_args, model_dir)),
      v4.new_code_cell(CURVES_SOURCE),
  ]
  if tensorboard:
    cells.append(v4.new_code_cell(TENSORBOARD_SOURCE))
  notebook = v4.new_notebook(cells=cells, metadata={
      "kernelspec": {"name": "python3", "display_name": "Python 3",
                     "language": "python"},
      "accelerator": "GPU",
      "colab": {"provenance": []}})
  nbformat.validate(notebook)
  return notebook


def main(argv):
  if not FLAGS.install:
    raise app.UsageError("--install is required: a git URL, a gs:// sdist or "
                         "a local path", exitcode=2)
  notebook = build_notebook(argv[1:], FLAGS.install, FLAGS.editable,
                            FLAGS.model_dir, FLAGS.tensorboard)
  directory = os.path.dirname(os.path.abspath(FLAGS.out))
  os.makedirs(directory, exist_ok=True)
  nbformat.write(notebook, FLAGS.out)
  print(f"Wrote {FLAGS.out}: open it in Colab (File > Upload notebook) and "
        "run all cells.")
  return 0


if __name__ == "__main__":
  app.run(main)
