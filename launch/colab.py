"""Write a Colab notebook that trains: python -m launch.colab --out=NB.ipynb -- FLAGS

    python -m launch.colab --out=train_alexnet.ipynb --install=git+https://... \
        -- --strategy=auto --epochs=20
    python -m launch.colab --out=cats_vs_dogs.ipynb --install=git+https://... \
        --data=tfds:cats_vs_dogs

The notebook installs this package (--install: a git URL, a gs:// sdist or a
local path) without touching the runtime's TensorFlow, says which runtime it
got (TPU, GPU or CPU), optionally prepares TFRecord shards from --data (any
`trainer.prepare` source) and trains the `cats_vs_dogs` config on them, runs
`python -m trainer.task` with the trainer flags after `--`, then shows the
training curves and TensorBoard. On a GPU or TPU runtime the trainer gets
--require_accelerator=gpu|tpu, so a TensorFlow that cannot see the
accelerator stops at once instead of training on the CPU. Open it in Colab
(File > Upload notebook) and run all cells.

The trainer flags are parsed here into the trainer's Config, so a typo fails
now rather than in the notebook. No cell runs a shell line: every value, the
trainer flags included, is written as a Python string literal and passed to
subprocess as an argument list, so a value like `x; rm -rf /` arrives as that
literal string and IPython's `!`/`{}`/`$` expansion never sees it.

Never imports TensorFlow.
"""

import os
import sys

from absl import app
from absl import flags
import nbformat
from nbformat import v4

from launch import platforms
from launch import trainer_flags
from trainer.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "train_alexnet.ipynb", "Notebook to write.")
flags.DEFINE_string(
  "install",
  None,
  "What the notebook pip-installs: a git "
  "URL (git+https://...), a gs:// sdist (as launch.vertex "
  "uploads; copied with gcloud first) or a local path.",
)
flags.DEFINE_bool("editable", False, "Install a local path in editable mode.")
flags.DEFINE_string(
  "model_dir",
  "/content/runs/colab",
  "The run's model dir (a gs:// path keeps it after the runtime ends).",
)
flags.DEFINE_bool("tensorboard", True, "Add the TensorBoard cell.")
flags.DEFINE_string(
  "data",
  "",
  "A trainer.prepare --source (tfds:NAME, "
  "folder:PATH, synthetic): add a cell that writes its "
  "TFRecord shards and train on them (with "
  "--config=cats_vs_dogs unless the trainer flags name one).",
)
flags.DEFINE_string(
  "data_dir",
  "/content/data",
  "Where the shards go on GPU and CPU runtimes (one subdirectory per source).",
)
flags.DEFINE_string(
  "gcs_data_dir",
  "",
  "gs:// directory for the shards on a "
  "TPU runtime; required when the runtime's TPU is remote "
  "(it cannot read the runtime's disk).",
)
flags.DEFINE_multi_string(
  "prepare_flag",
  [],
  "A trainer.prepare flag for the "
  "data cell, e.g. --prepare_flag=--resize_to=256; "
  "repeatable.",
)

DATA_CONFIG = "cats_vs_dogs"  # The seed's experiment: what --data trains.

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
  """Python source of the install cell (it runs after the runtime cell).

  TPU runtimes bring no TensorFlow any more (launch/platforms.py): the cell
  installs tensorflow-tpu with the libtpu of its release. CPU and GPU
  runtimes keep Colab's TensorFlow when it is in this package's range and
  say which they found; else the cell installs one that is. Then the
  package goes in without dependencies, and launch.install_deps adds the
  others with the runtime's TensorFlow family pinned: pip never replaces
  that TensorFlow (or tensorflow-tpu) and its CUDA libraries.
  """
  tpu, colab = platforms.TPU_STACK, platforms.COLAB_RUNTIMES["tpu"]
  low, high = platforms.SUPPORTED_TENSORFLOW
  major, minor = high.split(".")
  in_range = f"tensorflow>={low},<{major}.{int(minor) + 1}"
  lines = [
    "# Install alexnet-tf on this runtime's TensorFlow.",
    RUN_HELPER,
    "import importlib.metadata",
    "def installed(name):",
    "    try:",
    "        return importlib.metadata.version(name)",
    "    except importlib.metadata.PackageNotFoundError:",
    "        return None",
    f"# Facts of {platforms.CHECKED} (launch/platforms.py): Colab's "
    "TPU runtimes",
    f"# no longer bring TensorFlow ({colab.source}).",
    f"TPU_PACKAGES = ['tensorflow-tpu=={tpu.tensorflow_tpu}', "
    f"'libtpu=={tpu.libtpu}']",
    f"TENSORFLOW_RANGE = {in_range!r}",
    "if ACCELERATOR == 'tpu':",
    "    if installed('tensorflow-tpu') is None:",
    "        if installed('tensorflow'):",
    "            # The CPU/GPU wheel and tensorflow-tpu own the same files.",
    "            print('Removing this runtime\\'s tensorflow', "
    "installed('tensorflow'), '(not the TPU build)')",
    "            run([sys.executable, '-m', 'pip', 'uninstall', '-q', '-y', "
    "'tensorflow'])",
    "        # A libtpu the runtime already has (JAX's) stays if "
    "tensorflow-tpu accepts it (pip replaces it otherwise).",
    "        wanted = [p for p in TPU_PACKAGES if not (p.startswith('libtpu==') "
    "and installed('libtpu'))]",
    "        print('This TPU runtime has no TensorFlow: installing', "
    "' '.join(wanted))",
    "        run([sys.executable, '-m', 'pip', 'install', '-q', *wanted])",
    "    print('TensorFlow: tensorflow-tpu', installed('tensorflow-tpu'))",
    "else:",
    "    found = installed('tensorflow')",
    f"    low, high = {tuple(int(p) for p in low.split('.'))!r}, "
    f"{tuple(int(p) for p in high.split('.'))!r}",
    "    if found and low <= tuple(int(p) for p in "
    "found.split('.')[:2]) <= high:",
    "        print(\"TensorFlow: this runtime's\", found, '(kept)')",
    "    else:",
    "        want = TENSORFLOW_RANGE.replace('tensorflow', "
    "'tensorflow[and-cuda]' if ACCELERATOR == 'gpu' else "
    "'tensorflow', 1)",
    "        print('TensorFlow: this runtime has', found or 'none', "
    "'- installing', want)",
    "        run([sys.executable, '-m', 'pip', 'install', '-q', want])",
    f"INSTALL = {install!r}",
  ]
  if install.startswith("gs://"):
    lines += [
      "local_sdist = '/content/' + INSTALL.rsplit('/', 1)[-1]",
      "run(['gcloud', 'storage', 'cp', INSTALL, local_sdist])",
      "INSTALL = local_sdist",
    ]
  pip = ["sys.executable", "'-m'", "'pip'", "'install'", "'-q'", "'--no-deps'"]
  if editable:
    pip.append("'-e'")
  lines += [
    f"run([{', '.join(pip)}, INSTALL])",
    "run([sys.executable, '-m', 'launch.install_deps'])",
  ]
  return "\n".join(lines)


RUNTIME_SOURCE = '''# Runtime: which accelerator this notebook got.
import glob, os, shutil, subprocess, sys
# A TPU VM runtime has /dev/accel*; the older remote TPUs set COLAB_TPU_ADDR.
REMOTE_TPU = bool(os.environ.get('COLAB_TPU_ADDR'))
if glob.glob('/dev/accel*') or REMOTE_TPU:
    runtime, ACCELERATOR = 'TPU', 'tpu'
elif shutil.which('nvidia-smi') and subprocess.run(['nvidia-smi', '-L'], capture_output=True).returncode == 0:
    runtime, ACCELERATOR = 'GPU: ' + subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True).stdout.strip(), 'gpu'
else:
    runtime, ACCELERATOR = 'CPU', 'none'
print('Runtime:', runtime, '- the trainer picks its strategy and precision from it (--strategy=auto).')
if ACCELERATOR != 'none':
    print(f'The trainer gets --require_accelerator={ACCELERATOR}: it stops at once if TensorFlow cannot see the {ACCELERATOR.upper()}.')
'''


def data_source(source, data_dir, gcs_data_dir, prepare_flags):
  """Python source of the cell that writes the shards of `source`."""
  name = source.split(":", 1)[-1].rstrip("/").rsplit("/", 1)[-1] or "data"
  return "\n".join(
    [
      "# Data: TFRecord shards from " + source.replace("\n", " "),
      f"DATA_SOURCE = {source!r}",
      f"PREPARE_FLAGS = {list(prepare_flags)!r}",
      f"LOCAL_DATA_DIR = {os.path.join(data_dir, name)!r}",
      f"GCS_DATA_DIR = {gcs_data_dir!r}  # gs://... for a TPU runtime",
      "if ACCELERATOR == 'tpu' and GCS_DATA_DIR:",
      "    DATA_DIR = GCS_DATA_DIR",
      "elif REMOTE_TPU:",
      "    raise RuntimeError('This runtime\\'s TPU is remote and cannot read the "
      "runtime\\'s disk: set GCS_DATA_DIR above to a gs:// directory (or "
      "regenerate the notebook with --gcs_data_dir).')",
      "else:",
      "    DATA_DIR = LOCAL_DATA_DIR",
      "run([sys.executable, '-m', 'trainer.prepare', '--source=' + DATA_SOURCE, "
      "'--out=' + DATA_DIR, *PREPARE_FLAGS])",
      "DATA_FLAGS = ['--train_data=' + DATA_DIR + '/train-*', "
      "'--eval_data=' + DATA_DIR + '/validation-*']",
    ]
  )


def flags_source(trainer_args, model_dir, data):
  """Python source of the cell that assembles the trainer's flags."""
  lines = [
    "# Trainer flags.",
    f"TRAINER_FLAGS = {list(trainer_args)!r}",
    f"MODEL_DIR = {model_dir!r}",
  ]
  if data:
    lines.append("TRAINER_FLAGS += DATA_FLAGS")
  lines += [
    "if ACCELERATOR != 'none' and not any(a.startswith('--require_accelerator') "
    "for a in TRAINER_FLAGS):",
    "    TRAINER_FLAGS.append('--require_accelerator=' + ACCELERATOR)",
    "print('python -m trainer.task', ' '.join(TRAINER_FLAGS))",
  ]
  return "\n".join(lines)


TRAIN_SOURCE = '''# Train.
run([sys.executable, '-m', 'trainer.task', *TRAINER_FLAGS])
'''

CURVES_SOURCE = '''# Training curves.
import os
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


def notebook_trainer_args(trainer_args, data, model_dir):
  """The trainer flags the notebook writes, checked as the trainer will.

  Adds --model_dir=`model_dir` unless the flags give one and, with `data`,
  --config=cats_vs_dogs unless they name a config (the data cell adds
  --train_data and --eval_data).

  Returns:
    (trainer flags, the run's model dir).

  Raises:
    UserError: one line naming the flag the trainer would reject.
  """
  args = list(trainer_args)
  given = trainer_flags.parse(args).given
  if data:
    for name in ("train_data", "eval_data"):
      if name in given:
        raise UserError(
          f"--data writes the shards and sets --{name}; drop "
          f"the trainer flag --{name}"
        )
    if "config" not in given:
      args.insert(0, f"--config={DATA_CONFIG}")
  if "model_dir" not in given:
    args.append(f"--model_dir={model_dir}")
  return args, trainer_flags.parse(args).config.model_dir


def build_notebook(
  trainer_args,
  install,
  editable=False,
  model_dir="/content/runs/colab",
  tensorboard=True,
  data="",
  data_dir="/content/data",
  gcs_data_dir="",
  prepare_flags=(),
):
  """The notebook as an nbformat NotebookNode.

  Raises:
    UserError: a trainer flag the trainer would reject, or a bad data option.
  """
  if gcs_data_dir and not gcs_data_dir.startswith("gs://"):
    raise UserError(
      f"--gcs_data_dir must be a gs:// path, got {gcs_data_dir!r}"
    )
  if (gcs_data_dir or prepare_flags) and not data:
    raise UserError("--gcs_data_dir and --prepare_flag need --data")
  trainer_args, model_dir = notebook_trainer_args(trainer_args, data, model_dir)
  intro = (
    "# Train AlexNet\n\nDetects the runtime (TPU, GPU or CPU), "
    "installs `alexnet-tf` (keeping the runtime's TensorFlow; "
    "tensorflow-tpu on TPU runtimes, which have none), "
  )
  if data:
    intro += "writes TFRecord shards from `" + data.replace("`", "'") + "`, "
  intro += (
    "trains with `python -m trainer.task`, then shows the training "
    "curves and TensorBoard.\n\nTrainer flags: `"
    + " ".join(trainer_args).replace("`", "'")
    + "`"
  )
  cells = [
    v4.new_markdown_cell(intro),
    v4.new_code_cell(RUNTIME_SOURCE),
    v4.new_code_cell(install_source(install, editable)),
  ]
  if data:
    cells.append(
      v4.new_code_cell(data_source(data, data_dir, gcs_data_dir, prepare_flags))
    )
  cells += [
    v4.new_code_cell(flags_source(trainer_args, model_dir, data)),
    v4.new_code_cell(TRAIN_SOURCE),
    v4.new_code_cell(CURVES_SOURCE),
  ]
  if tensorboard:
    cells.append(v4.new_code_cell(TENSORBOARD_SOURCE))
  notebook = v4.new_notebook(
    cells=cells,
    metadata={
      "kernelspec": {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
      },
      "accelerator": "GPU",
      "colab": {"provenance": []},
    },
  )
  nbformat.validate(notebook)
  return notebook


def main(argv):
  if not FLAGS.install:
    raise app.UsageError(
      "--install is required: a git URL, a gs:// sdist or a local path",
      exitcode=2,
    )
  try:
    notebook = build_notebook(
      argv[1:],
      FLAGS.install,
      FLAGS.editable,
      FLAGS.model_dir,
      FLAGS.tensorboard,
      FLAGS.data,
      FLAGS.data_dir,
      FLAGS.gcs_data_dir,
      FLAGS.prepare_flag,
    )
  except UserError as e:
    print(f"Error: {e}", file=sys.stderr)
    return 2
  directory = os.path.dirname(os.path.abspath(FLAGS.out))
  os.makedirs(directory, exist_ok=True)
  nbformat.write(notebook, FLAGS.out)
  print(
    f"Wrote {FLAGS.out}: open it in Colab (File > Upload notebook) and "
    "run all cells."
  )
  return 0


if __name__ == "__main__":
  app.run(main)
