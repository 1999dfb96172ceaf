"""Dockerfile and Dockerfile.tpu: what can be checked without a Docker engine.

The images are not built here. These tests check that each file parses into
known instructions, that every path it copies exists and together they hold
every package setup.py ships, that the install keeps the base image's
TensorFlow (`--no-deps` + launch.install_deps), that the entrypoint module
starts, and that the versions agree with setup.py and the TPU VM recipe
(docs/platforms/tpu-vm.md). Each check is also shown catching a planted
mistake.
"""

import ast
import json
import os
import re
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from conftest import REPO, cli_env

INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY",
                "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD",
                "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER"}
ENTRYPOINT = ["python", "-m", "trainer.task"]


def _read(name):
  with open(os.path.join(REPO, name), encoding="utf-8") as f:
    return f.read()


def parse_dockerfile(text):
  """[(INSTRUCTION, arguments)] as Docker reads the file.

  Comment lines are dropped (also inside a continued line) and a trailing
  backslash joins a line to the next. Raises ValueError on an unknown
  instruction or a file that ends inside a continued line.
  """
  instructions, pending = [], ""
  for line in text.splitlines():
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
      continue
    if stripped.endswith("\\"):
      pending += stripped[:-1] + " "
      continue
    keyword, _, arguments = (pending + stripped).partition(" ")
    pending = ""
    if keyword.upper() not in INSTRUCTIONS:
      raise ValueError(f"unknown instruction {keyword!r}")
    instructions.append((keyword.upper(), " ".join(arguments.split())))
  if pending:
    raise ValueError("the file ends inside a continued line")
  return instructions


def setup_packages_and_tensorflow(setup_text):
  """(top-level packages setup.py includes, its `tensorflow` Requirement)."""
  call = next(node for node in ast.walk(ast.parse(setup_text))
              if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "setup")
  keywords = {k.arg: k.value for k in call.keywords}
  includes = [ast.literal_eval(k.value) for k in keywords["packages"].keywords
              if k.arg == "include"][0]
  requirements = [Requirement(r) for r in ast.literal_eval(keywords["install_requires"])]
  (tensorflow,) = [r for r in requirements if r.name == "tensorflow"]
  return sorted({p.split(".")[0] for p in includes}), tensorflow


def newest_minor(requirement):
  """'2.N', the newest TensorFlow minor version the requirement allows."""
  allowed = [m for m in range(100)
             if any(requirement.specifier.contains(f"2.{m}.{p}") for p in range(10))]
  return f"2.{max(allowed)}"


def copy_problems(instructions, repo=REPO):
  """Sources that do not exist, and setup.py's packages that are not copied."""
  packages, _ = setup_packages_and_tensorflow(_read("setup.py"))
  copied, problems = set(), []
  for keyword, arguments in instructions:
    if keyword not in ("COPY", "ADD"):
      continue
    parts = [p for p in arguments.split() if not p.startswith("--")]
    for source in parts[:-1]:
      copied.add(source.rstrip("/"))
      if not os.path.exists(os.path.join(repo, source)):
        problems.append(f"COPY source {source} does not exist")
  for needed in ["setup.py", "README.md", *packages]:
    if needed not in copied:
      problems.append(f"{needed} is not copied")
  return problems


def install_problems(instructions):
  """The package must go in with --no-deps, then launch.install_deps."""
  runs = " && ".join(a for k, a in instructions if k == "RUN")
  problems = []
  if not re.search(r"pip install [^&]*--no-deps[^&]* \.( |$)", runs):
    problems.append("the package is not installed with --no-deps")
  if "python -m launch.install_deps" not in runs:
    problems.append("launch.install_deps does not install the other requirements")
  entrypoint = [a for k, a in instructions if k == "ENTRYPOINT"]
  if [json.loads(e) for e in entrypoint] != [ENTRYPOINT]:
    problems.append(f"ENTRYPOINT is {entrypoint}, not {ENTRYPOINT} (exec form)")
  return problems


def gpu_base_problems(instructions, setup_text):
  """The base is the official TensorFlow GPU image of setup.py's newest TF."""
  _, tensorflow = setup_packages_and_tensorflow(setup_text)
  base = next(a for k, a in instructions if k == "FROM")
  match = re.fullmatch(r"tensorflow/tensorflow:(\d+\.\d+)\.(\d+)-gpu", base)
  if not match:
    return [f"FROM {base} is not tensorflow/tensorflow:X.Y.Z-gpu"]
  if match.group(1) != newest_minor(tensorflow):
    return [f"FROM {base}: setup.py's newest TensorFlow is "
            f"{newest_minor(tensorflow)} ({tensorflow})"]
  return []


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.tpu"])
def test_dockerfile_parses_copies_existing_paths_and_keeps_the_base_tensorflow(name):
  instructions = parse_dockerfile(_read(name))
  assert instructions[0][0] == "FROM"
  assert copy_problems(instructions) == []
  assert install_problems(instructions) == []


def test_gpu_image_is_the_official_image_of_the_newest_supported_tensorflow():
  assert gpu_base_problems(parse_dockerfile(_read("Dockerfile")), _read("setup.py")) == []


def test_tpu_image_matches_the_tpu_vm_recipe():
  dockerfile = _read("Dockerfile.tpu")
  instructions = parse_dockerfile(dockerfile)
  pin = re.search(r"'?tensorflow-tpu==([\d.*]+)'?", dockerfile).group(1)
  recipe_pins = re.findall(r"tensorflow-tpu==([\d.*]+)",
                           _read("docs/platforms/tpu-vm.md"))
  assert recipe_pins and set(recipe_pins) == {pin}
  # The PJRT plugin path names the base image's Python.
  python = re.fullmatch(r"python:(\d+\.\d+)-slim", instructions[0][1]).group(1)
  env = " ".join(a for k, a in instructions if k == "ENV")
  assert f"/usr/local/lib/python{python}/site-packages/libtpu/libtpu.so" in env


@pytest.mark.multiprocess
def test_entrypoint_module_starts():
  result = subprocess.run([sys.executable, "-m", "trainer.task", "--helpshort"],
                          cwd=REPO, env=cli_env("/tmp"), capture_output=True,
                          text=True, timeout=120)
  # absl exits 1 after printing help; what matters is that the module
  # imported and defined its flags.
  output = result.stdout + result.stderr
  assert result.returncode == 1 and "Traceback" not in output, output
  assert "--require_accelerator" in output


# Negative controls: each check reports a planted mistake.

def test_checks_catch_planted_mistakes(tmp_path):
  good = _read("Dockerfile")
  with pytest.raises(ValueError, match="unknown instruction"):
    parse_dockerfile(good + "\nCOPPY x y\n")
  with pytest.raises(ValueError, match="continued line"):
    parse_dockerfile(good + "\nRUN echo \\\n")
  missing = parse_dockerfile(good.replace("COPY configs/", "COPY config/"))
  assert "COPY source config/ does not exist" in copy_problems(missing)
  assert "configs is not copied" in copy_problems(missing)
  with_deps = parse_dockerfile(good.replace("--no-deps", ""))
  assert "the package is not installed with --no-deps" in install_problems(with_deps)
  shell_form = parse_dockerfile(re.sub(r"ENTRYPOINT .*", "ENTRYPOINT python -m trainer.task",
                                       good))
  with pytest.raises(json.JSONDecodeError):
    install_problems(shell_form)
  newer_setup = re.sub(r'"tensorflow[=<>!~][^"]*"', '"tensorflow>=2.17,<2.23"', _read("setup.py"))
  assert newer_setup != _read("setup.py")
  assert gpu_base_problems(parse_dockerfile(good), newer_setup)
