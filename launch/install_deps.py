"""Install this package's dependencies, keeping the TensorFlow already here.

    pip install --no-deps PACKAGE && python -m launch.install_deps

For environments that bring their own TensorFlow: a Colab runtime, a TPU VM or
image with tensorflow-tpu, the TensorFlow GPU base image of the Dockerfile.
`pip install PACKAGE` resolves the package's `tensorflow` requirement itself:
it replaces tensorflow-tpu with the CPU/GPU wheel (another distribution name,
so pip sees no TensorFlow at all) and replaces any TensorFlow outside the
requirement with a wheel the installed CUDA libraries may not fit. This
keeps the TensorFlow family already installed (TensorFlow, Keras, TensorBoard,
libtpu, NVIDIA libraries: matched to each other by whoever installed them, so
the package's own requirements on them are not applied; a note says when one
asks for another version) and installs every other requirement with that
family pinned as pip constraints, so that no dependency can move them either.
Pip fails instead of replacing them when a requirement cannot be met without
doing so.

Never imports TensorFlow.
"""

import importlib.metadata
import os
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

# packaging comes with TensorFlow (one of its requirements), which is here.
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

FLAGS = flags.FLAGS
flags.DEFINE_string(
  "package",
  "alexnet-tf",
  "Installed distribution whose "
  "requirements to install (installed with --no-deps).",
)
flags.DEFINE_bool(
  "dry_run", False, "Print what pip would install; change nothing."
)

# Distributions that are TensorFlow itself under one name or another.
TENSORFLOW = (
  "tensorflow",
  "tensorflow-cpu",
  "tensorflow-tpu",
  "tensorflow-intel",
  "tensorflow-macos",
)
# Installed alongside TensorFlow and matched to its version: kept as they are.
TENSORFLOW_FAMILY = TENSORFLOW + (
  "keras",
  "tf-keras",
  "tensorboard",
  "tensorboard-data-server",
  "libtpu",
  "libtpu-nightly",
  "ml-dtypes",
)


class InstallError(Exception):
  """A problem the user can fix; one line."""


def _in_family(name):
  name = canonicalize_name(name)
  return name in TENSORFLOW_FAMILY or name.startswith("nvidia-")


def split_requirements(package):
  """(the TensorFlow requirement or None, the other requirements).

  Extras' requirements and those whose environment markers exclude this
  machine are left out, as pip would leave them out.
  """
  try:
    texts = importlib.metadata.requires(package) or []
  except importlib.metadata.PackageNotFoundError:
    raise InstallError(
      f"--package={package} is not installed; first run "
      f"pip install --no-deps <{package} sdist, git URL or "
      "path>"
    ) from None
  tensorflow, others = None, []
  for text in texts:
    requirement = Requirement(text)
    if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
      continue
    if canonicalize_name(requirement.name) in TENSORFLOW:
      tensorflow = requirement
    else:
      others.append(requirement)
  return tensorflow, others


def installed_family():
  """{name: version} of the installed TensorFlow family."""
  found = {}
  for dist in importlib.metadata.distributions():
    name = dist.metadata["Name"]
    if name and _in_family(name):
      found[canonicalize_name(name)] = dist.version
  return found


def plan(package):
  """What to install and what to keep.

  Returns:
    (requirements to install, {name: version} kept, notes): a requirement
    on an installed member of the TensorFlow family is not installed (the
    runtime's version is kept); a note says when it asked for another one.

  Raises:
    InstallError: when no TensorFlow is installed (nothing to keep).
  """
  tensorflow, others = split_requirements(package)
  kept = installed_family()
  installed_tf = [name for name in TENSORFLOW if name in kept]
  if not installed_tf:
    raise InstallError(
      "no TensorFlow is installed here, so there is none to "
      f"keep; install {package} with its dependencies "
      "instead (pip install without --no-deps)"
    )
  to_install, notes = [], []
  asked = [(installed_tf[0], tensorflow)] if tensorflow else []
  for requirement in others:
    name = canonicalize_name(requirement.name)
    if name in kept:
      asked.append((name, requirement))
    else:
      to_install.append(requirement)
  for name, requirement in asked:
    if not requirement.specifier.contains(kept[name], prereleases=True):
      notes.append(
        f"keeping {name} {kept[name]}, outside {package}'s "
        f"requirement {requirement}"
      )
  return to_install, kept, notes


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}", exitcode=2)
  try:
    requirements, kept, notes = plan(FLAGS.package)
  except InstallError as e:
    print(f"Error: {e}", file=sys.stderr)
    return 1
  print(
    "Keeping "
    + ", ".join(
      f"{n} {v}" for n, v in sorted(kept.items()) if not n.startswith("nvidia-")
    ),
    flush=True,
  )
  for note in notes:
    print(f"Note: {note}", flush=True)
  if not requirements:
    return 0
  print("Installing " + ", ".join(str(r) for r in requirements), flush=True)
  with tempfile.TemporaryDirectory() as scratch:
    constraints = os.path.join(scratch, "keep.txt")
    with open(constraints, "w", encoding="utf-8") as f:
      f.writelines(f"{name}=={version}\n" for name, version in kept.items())
    command = [
      sys.executable,
      "-m",
      "pip",
      "install",
      "-c",
      constraints,
      *(str(r) for r in requirements),
    ]
    if FLAGS.dry_run:
      command.insert(4, "--dry-run")
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
  app.run(main)
