"""A throwaway virtualenv that sees this machine's packages (TensorFlow
included) but installs into its own directory, so a test can run pip for real
without changing the shared environment."""

import os
import subprocess
import sys
import glob


class SystemVenv:
  """`python -m venv --system-site-packages` in `path`; its pip is this
  machine's, installing into the venv."""

  def __init__(self, path):
    self.path = str(path)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    self.path], check=True, capture_output=True, timeout=300)
    self.python = os.path.join(self.path, "bin", "python")
    (self.site_packages,) = glob.glob(os.path.join(self.path, "lib", "python*",
                                                   "site-packages"))

  def run(self, *args, env=None, timeout=300):
    """Runs this venv's python with `args`; returns the CompletedProcess."""
    return subprocess.run([self.python, *args], env=env, capture_output=True,
                          text=True, timeout=timeout)

  def own_distributions(self):
    """Names of the distributions installed into the venv itself."""
    return sorted(os.path.basename(p).split("-")[0].lower() for p in glob.glob(
        os.path.join(self.site_packages, "*.dist-info")))
