"""launch.install_deps: installs a package's requirements except TensorFlow,
with the installed TensorFlow family pinned, in a venv layered on the test
environment (its TensorFlow included) (pip runs for real, offline, against local wheels)."""

import importlib.metadata
import os
import subprocess
import sys
import textwrap

from conftest import REPO
from layered_venv import LayeredVenv
import pytest

pytestmark = pytest.mark.install


def _write_package(directory, name, requires):
  os.makedirs(directory)
  with open(os.path.join(directory, "setup.py"), "w") as f:
    f.write(
      textwrap.dedent(f"""\
        import setuptools
        setuptools.setup(name={name!r}, version="1.0", py_modules=[],
                         install_requires={requires!r},
                         extras_require={{"extra": ["not-installable-anywhere"]}})
        """)
    )
  return directory


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
  root = tmp_path_factory.mktemp("install")
  venv = LayeredVenv(root / "venv")
  wheels = root / "wheels"
  # A requirement only the local wheel directory can satisfy, and a package
  # that asks for a TensorFlow older than the one installed here.
  helper = _write_package(str(root / "helper"), "helper-dep-for-test", [])
  subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "wheel",
      "-q",
      "--no-deps",
      "--no-build-isolation",
      "-w",
      str(wheels),
      helper,
    ],
    check=True,
    capture_output=True,
    timeout=300,
  )
  wants_old = _write_package(
    str(root / "wants_old"),
    "wants-old-tf",
    ["tensorflow<2.21", "keras>=99", "helper-dep-for-test", "absl-py"],
  )
  result = venv.run(
    "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", wants_old
  )
  assert result.returncode == 0, result.stderr
  # Offline: nothing can come from an index, only from the local wheels.
  venv.wants_old = wants_old
  venv.env = {
    **os.environ,
    "PIP_NO_INDEX": "1",
    "PIP_FIND_LINKS": str(wheels),
    "PYTHONPATH": REPO,
  }
  return venv


def test_keeps_tensorflow_and_installs_the_other_requirements(venv):
  tf_version = importlib.metadata.version("tensorflow")
  result = venv.run(
    "-m", "launch.install_deps", "--package=wants-old-tf", env=venv.env
  )
  assert result.returncode == 0, result.stdout + result.stderr
  assert f"tensorflow {tf_version}" in result.stdout.splitlines()[0]
  assert (
    "Note: keeping tensorflow" in result.stdout
    and "tensorflow<2.21" in result.stdout
  )
  # Keras goes with TensorFlow: the installed one is kept too, with a note.
  assert (
    f"Note: keeping keras {importlib.metadata.version('keras')}"
    in result.stdout
  )
  # Installed into the venv: the helper, nothing of TensorFlow's, not the extra.
  own = venv.own_distributions()
  assert "helper_dep_for_test" in own and "wants_old_tf" in own
  assert not [
    name
    for name in own
    if name.startswith(
      ("tensorflow", "keras", "tensorboard", "nvidia", "not_installable")
    )
  ]
  check = venv.run(
    "-c", "import importlib.metadata as m; print(m.version('tensorflow'))"
  )
  assert check.stdout.strip() == tf_version


def test_plain_pip_would_replace_tensorflow(venv):
  # Negative control: pip resolving the same requirements itself goes for
  # another TensorFlow (and fails here only because it is offline).
  result = venv.run(
    "-m", "pip", "install", "--no-build-isolation", venv.wants_old, env=venv.env
  )
  assert result.returncode != 0
  assert "tensorflow<2.21" in result.stderr


def test_a_package_that_is_not_installed_is_one_line(venv):
  result = venv.run(
    "-m", "launch.install_deps", "--package=not-installed-here", env=venv.env
  )
  assert result.returncode == 1
  assert result.stderr.strip().startswith(
    "Error: --package=not-installed-here is not installed"
  )
  assert len(result.stderr.strip().splitlines()) == 1
