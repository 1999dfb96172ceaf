"""Installing this package keeps the TensorFlow an environment already has.

Vertex AI's prebuilt images, Colab and TPU VMs bring a TensorFlow built for
their CUDA/cuDNN or libtpu. `pip install` of this package there must neither
replace it (the replacement needs libraries the image lacks, and TensorFlow
then sees no GPU) nor move a library it pins (numpy, protobuf, tensorboard,
ml-dtypes): pip does not re-check what is already installed, so a replaced
TensorFlow shows in its report, while a broken pin shows only as a conflict
it warns about afterwards. Both are checked here, against `pip install
--dry-run --report` of the built sdist in an environment that holds the
oldest supported TensorFlow and its Keras (.ci/run creates one and names its
python in ALEXNET_OLDEST_TF_PYTHON).
"""

import glob
import json
import os
import subprocess
import sys

from conftest import PROBE_RUNNER
from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
import pytest

OLDEST_TF_PYTHON = os.environ.get("ALEXNET_OLDEST_TF_PYTHON", "")

pytestmark = [
  pytest.mark.install,
  pytest.mark.skipif(
    not OLDEST_TF_PYTHON,
    reason="needs ALEXNET_OLDEST_TF_PYTHON: the python of an environment "
    "holding only the oldest supported TensorFlow and its Keras "
    "(.ci/run creates one)",
  ),
]

# What the platform's image owns: the TensorFlow build, its Keras, and the
# CUDA/TPU libraries it was built against.
_FRAMEWORK = {
  "tensorflow",
  "tensorflow-cpu",
  "tensorflow-gpu",
  "tensorflow-tpu",
  "tensorflow-intel",
  "keras",
  "libtpu",
  "libtpu-nightly",
}


def _is_framework(name):
  name = canonicalize_name(name)
  return name in _FRAMEWORK or name.startswith("nvidia-")


def installed_distributions(python):
  """{canonical name: {"version", "requires"}} of an interpreter's packages."""
  # -I: that environment's packages only, not this checkout's egg-info
  # (PYTHONPATH or the current directory may name the checkout).
  result = subprocess.run(
    [python, "-I", PROBE_RUNNER, "install:list_distributions"],
    capture_output=True,
    text=True,
    check=True,
  )
  return {
    canonicalize_name(name): info
    for name, info in json.loads(result.stdout).items()
  }


def dry_run(python, requirements, report_path):
  """What `pip install REQUIREMENTS` would install: {name: {version, requires}}."""
  result = subprocess.run(
    [
      python,
      "-I",
      "-m",
      "pip",
      "install",
      "--dry-run",
      "--quiet",
      "--disable-pip-version-check",
      "--report",
      str(report_path),
      *requirements,
    ],
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  with open(report_path) as f:
    report = json.load(f)
  return {
    canonicalize_name(item["metadata"]["name"]): {
      "version": item["metadata"]["version"],
      "requires": item["metadata"].get("requires_dist", []),
    }
    for item in report["install"]
  }


def framework_problems(installed, to_install):
  """Ways an install would disturb the framework; [] when it leaves it alone.

  Args:
    installed: the environment now, as from `installed_distributions`.
    to_install: what pip would install, as from `dry_run`.
  """
  problems = []
  for name, new in sorted(to_install.items()):
    if not _is_framework(name):
      continue
    if name in installed:
      problems.append(
        f"would replace {name} {installed[name]['version']} "
        f"with {new['version']}"
      )
    else:
      problems.append(f"would add {name} {new['version']}")
  after = {**installed, **to_install}
  for name, info in sorted(installed.items()):
    if not _is_framework(name):
      continue
    for line in info["requires"]:
      requirement = Requirement(line)
      if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
        continue
      dependency = after.get(canonicalize_name(requirement.name))
      if dependency is None:
        continue  # Absent before too: not this install's doing.
      if not requirement.specifier.contains(
        dependency["version"], prereleases=True
      ):
        problems.append(
          f"{name} {info['version']} requires {line}, but "
          f"{requirement.name} {dependency['version']} would be "
          "installed"
        )
  return problems


@pytest.fixture(scope="module")
def oldest():
  """The target environment's packages; it must hold TensorFlow and Keras."""
  packages = installed_distributions(OLDEST_TF_PYTHON)
  assert "tensorflow" in packages and "keras" in packages, sorted(packages)
  return packages


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
  """The sdist launch.vertex uploads, built from this checkout."""
  out_dir = tmp_path_factory.mktemp("sdist")
  subprocess.run(
    [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(out_dir)],
    cwd=REPO,
    check=True,
    capture_output=True,
  )
  (path,) = glob.glob(str(out_dir / "*.tar.gz"))
  return path


def test_installing_the_sdist_keeps_the_oldest_tensorflow(
  oldest, sdist, tmp_path
):
  to_install = dry_run(OLDEST_TF_PYTHON, [sdist], tmp_path / "report.json")
  # The environment is the oldest end the package declares.
  declared = [Requirement(r) for r in to_install["alexnet-tf"]["requires"]]
  lowest = {
    r.name: Version(s.version)
    for r in declared
    if not r.marker
    for s in r.specifier
    if s.operator == ">="
  }
  tensorflow = Version(oldest["tensorflow"]["version"])
  assert tensorflow.release[:2] == lowest["tensorflow"].release[:2], lowest
  assert Version(oldest["keras"]["version"]) == lowest["keras"], lowest
  assert framework_problems(oldest, to_install) == [], (
    f"tensorflow {oldest['tensorflow']['version']}, keras "
    f"{oldest['keras']['version']}; pip would install "
    f"{ {n: i['version'] for n, i in to_install.items()} }"
  )


@pytest.mark.parametrize(
  "planted,expected",
  [
    ("tensorflow>=2.18", "would replace tensorflow"),
    ("numpy>=2", "requires numpy"),
  ],
)
def test_the_check_catches_a_replaced_or_broken_tensorflow(
  oldest, tmp_path, planted, expected
):
  # Negative control: requirements that do disturb TensorFlow 2.17.
  to_install = dry_run(OLDEST_TF_PYTHON, [planted], tmp_path / "report.json")
  problems = framework_problems(oldest, to_install)
  assert any(expected in problem for problem in problems), problems
