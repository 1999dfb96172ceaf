"""A throwaway virtualenv layered on the one running the tests.

The test environment is built from the project's own extras (`pip install
-e ".[test]"`), so a nested venv must see *its* packages, TensorFlow
included - not the base interpreter's, which `--system-site-packages` would
give when the tests run inside a virtualenv. A `.pth` file in the new venv
lists the running environment's site-packages after the venv's own, so pip
installs into the new venv (and what it installs there shadows the outer
copy) without downloading TensorFlow again."""

import glob
import os
import site
import subprocess
import sys


class LayeredVenv:
  """`python -m venv` in `path` that also imports what this environment has."""

  def __init__(self, path):
    self.path = str(path)
    subprocess.run(
      [sys.executable, "-m", "venv", "--without-pip", self.path],
      check=True,
      capture_output=True,
      timeout=300,
    )
    self.python = os.path.join(self.path, "bin", "python")
    (self.site_packages,) = glob.glob(
      os.path.join(self.path, "lib", "python*", "site-packages")
    )
    outer = [p for p in site.getsitepackages() if os.path.isdir(p)]
    with open(
      os.path.join(self.site_packages, "_outer_environment.pth"), "w"
    ) as f:
      f.write("\n".join(outer) + "\n")

  def run(self, *args, env=None, timeout=300):
    """Runs this venv's python with `args`; returns the CompletedProcess."""
    return subprocess.run(
      [self.python, *args],
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
    )

  def own_distributions(self):
    """Names of the distributions installed into the venv itself."""
    return sorted(
      os.path.basename(p).split("-")[0].lower()
      for p in glob.glob(os.path.join(self.site_packages, "*.dist-info"))
    )
