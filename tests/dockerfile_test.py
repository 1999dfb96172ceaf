"""Dockerfile and Dockerfile.tpu: what can be checked without a Docker engine.

The images are not built here. These tests check that each file parses into
known instructions, that every path it copies exists and together they hold
every package setup.py ships, that the install keeps the image's TensorFlow
(`--no-deps` + launch.install_deps), that the entrypoint module starts, and
that every image and version they name is the one launch/platforms.py
records (with its source and date): the GPU image's CUDA and cuDNN wheels
satisfy what its TensorFlow was built for - resolved for real with pip
(`--dry-run --report`, the install tier) - and the TPU image pins
tensorflow-tpu with the libtpu released with it. Each check is also shown
catching a planted mistake (the official tensorflow/tensorflow:2.21.0-gpu
base, with its system cuDNN 8.9, among them).
"""

import ast
import json
import os
import re
import subprocess
import sys

from conftest import REPO
from conftest import cli_env
from packaging.requirements import Requirement
import pytest
import tensorflow as tf

from launch import platforms

INSTRUCTIONS = {
  "FROM",
  "RUN",
  "CMD",
  "LABEL",
  "EXPOSE",
  "ENV",
  "ADD",
  "COPY",
  "ENTRYPOINT",
  "VOLUME",
  "USER",
  "WORKDIR",
  "ARG",
  "ONBUILD",
  "STOPSIGNAL",
  "HEALTHCHECK",
  "SHELL",
  "MAINTAINER",
}
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
  call = next(
    node
    for node in ast.walk(ast.parse(setup_text))
    if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "setup"
  )
  keywords = {k.arg: k.value for k in call.keywords}
  includes = [
    ast.literal_eval(k.value)
    for k in keywords["packages"].keywords
    if k.arg == "include"
  ][0]
  requirements = [
    Requirement(r) for r in ast.literal_eval(keywords["install_requires"])
  ]
  (tensorflow,) = [r for r in requirements if r.name == "tensorflow"]
  return sorted({p.split(".")[0] for p in includes}), tensorflow


def newest_minor(requirement):
  """'2.N', the newest TensorFlow minor version the requirement allows."""
  allowed = [
    m
    for m in range(100)
    if any(requirement.specifier.contains(f"2.{m}.{p}") for p in range(10))
  ]
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
    problems.append(
      "launch.install_deps does not install the other requirements"
    )
  entrypoint = [a for k, a in instructions if k == "ENTRYPOINT"]
  if [json.loads(e) for e in entrypoint] != [ENTRYPOINT]:
    problems.append(f"ENTRYPOINT is {entrypoint}, not {ENTRYPOINT} (exec form)")
  return problems


def _pins(text):
  """{name: version} of every `name==version` requirement in `text`."""
  return {
    m.group(1).split("[")[0].lower(): m.group(2)
    for m in re.finditer(
      r"'?([A-Za-z0-9_.\-]+(?:\[[a-z-]+\])?)==([0-9][0-9.]*)'?", text
    )
  }


def gpu_image_problems(instructions, setup_text):
  """The GPU image is launch/platforms.GPU_IMAGE: its base, the newest
  TensorFlow setup.py allows, with the CUDA/cuDNN wheels TensorFlow was
  built for."""
  image = platforms.GPU_IMAGE
  _, tensorflow = setup_packages_and_tensorflow(setup_text)
  problems = []
  base = next(a for k, a in instructions if k == "FROM")
  if base != image.base:
    problems.append(f"FROM {base}, not {image.base} (launch/platforms.py)")
  runs = " ".join(a for k, a in instructions if k == "RUN")
  pins = _pins(runs)
  if "tensorflow[and-cuda]==" not in runs:
    problems.append("TensorFlow is not installed with its and-cuda wheels")
  if pins.get("tensorflow") != image.tensorflow:
    problems.append(
      f"tensorflow=={pins.get('tensorflow')}, not "
      f"{image.tensorflow} (launch/platforms.py)"
    )
  if not image.tensorflow.startswith(newest_minor(tensorflow) + "."):
    problems.append(
      f"TensorFlow {image.tensorflow}: setup.py's newest is "
      f"{newest_minor(tensorflow)} ({tensorflow})"
    )
  for name, version in image.cuda_wheels.items():
    if pins.get(name) != version:
      problems.append(
        f"{name}=={pins.get(name)}, not {version} (launch/platforms.py)"
      )
  build = platforms.TENSORFLOW_CUDA_BUILDS[image.tensorflow.rsplit(".", 1)[0]]
  problems += platforms.cuda_stack_problems(
    build, platforms.wheel_libraries(pins)
  )
  return problems


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.tpu"])
def test_dockerfile_parses_copies_existing_paths_and_keeps_the_base_tensorflow(
  name,
):
  instructions = parse_dockerfile(_read(name))
  assert instructions[0][0] == "FROM"
  assert copy_problems(instructions) == []
  assert install_problems(instructions) == []


def test_gpu_image_carries_the_cuda_and_cudnn_its_tensorflow_was_built_for():
  assert (
    gpu_image_problems(parse_dockerfile(_read("Dockerfile")), _read("setup.py"))
    == []
  )


def test_the_table_knows_the_installed_tensorflows_cuda_build():
  """The table's row for the TensorFlow installed here is what the wheel
  says it was built with (tf.sysconfig); the other rows come from
  TensorFlow's tested-builds page (launch/platforms.py)."""
  info = tf.sysconfig.get_build_info()
  if not info.get("is_cuda_build"):
    pytest.skip("this TensorFlow wheel is not a CUDA build")
  row = platforms.TENSORFLOW_CUDA_BUILDS[
    ".".join(tf.__version__.split(".")[:2])
  ]
  # "12.5.1" (2.21) or "12.3" (2.17): the table holds major.minor.
  assert info["cuda_version"].split(".")[:2] == row.cuda.split(".")
  assert row.cudnn.split(".")[0] == str(info["cudnn_version"]).split(".")[0]


def test_tpu_image_pins_tensorflow_tpu_with_its_libtpu_where_vertex_looks():
  stack = platforms.TPU_STACK
  dockerfile = _read("Dockerfile.tpu")
  instructions = parse_dockerfile(dockerfile)
  pins = _pins(" ".join(a for k, a in instructions if k == "RUN"))
  assert pins["tensorflow-tpu"] == stack.tensorflow_tpu
  assert pins["libtpu"] == stack.libtpu
  assert instructions[0][1] == f"python:{stack.python}-slim-bookworm"
  runs = " ".join(a for k, a in instructions if k == "RUN")
  assert f'/libtpu.so" {stack.libtpu_path}' in runs
  env = " ".join(a for k, a in instructions if k == "ENV")
  assert f"TF_PLUGGABLE_DEVICE_LIBRARY_PATH={stack.libtpu_path}" in env


@pytest.mark.install
def test_pip_resolves_the_gpu_images_install_line_to_its_cuda_build(tmp_path):
  """pip itself resolves the Dockerfile's install line for the image's
  Python and platform (metadata only, nothing is installed): the CUDA
  runtime and cuDNN it brings satisfy the TensorFlow build. Negative
  control: what `pip install tensorflow` (the official image's line, no
  and-cuda extra) brings leaves the libraries to the official base image,
  whose cuDNN 8.9 fails the same check."""
  image = platforms.GPU_IMAGE
  instructions = parse_dockerfile(_read("Dockerfile"))
  line = next(
    a for k, a in instructions if k == "RUN" and "tensorflow[and-cuda]" in a
  )
  requirements = [token.strip("'") for token in line.split()[4:]]
  report = tmp_path / "report.json"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "install",
      "--dry-run",
      "--quiet",
      "--disable-pip-version-check",
      "--ignore-installed",
      "--report",
      str(report),
      "--target",
      str(tmp_path / "never"),
      "--python-version",
      image.python,
      "--implementation",
      "cp",
      "--only-binary=:all:",
      "--platform",
      "manylinux_2_27_x86_64",
      "--platform",
      "manylinux_2_17_x86_64",
      "--platform",
      "manylinux2014_x86_64",
      *requirements,
    ],
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  resolved = {
    item["metadata"]["name"].lower(): item["metadata"]["version"]
    for item in json.loads(report.read_text())["install"]
  }
  assert resolved["tensorflow"] == image.tensorflow
  for name, version in image.cuda_wheels.items():
    assert resolved[name] == version, name
  build = platforms.TENSORFLOW_CUDA_BUILDS[image.tensorflow.rsplit(".", 1)[0]]
  assert (
    platforms.cuda_stack_problems(build, platforms.wheel_libraries(resolved))
    == []
  )
  # Without the extra, TensorFlow's own requirements bring no CUDA wheel.
  tensorflow = next(
    item
    for item in json.loads(report.read_text())["install"]
    if item["metadata"]["name"].lower() == "tensorflow"
  )
  plain = [Requirement(r) for r in tensorflow["metadata"]["requires_dist"]]
  assert not [
    r
    for r in plain
    if r.name.startswith("nvidia")
    and (r.marker is None or r.marker.evaluate({"extra": ""}))
  ]
  official = platforms.cuda_stack_problems(
    build, platforms.OFFICIAL_TF_GPU_IMAGE_LIBRARIES
  )
  assert (
    f"cuDNN 8.9.6.50: TensorFlow {build.tensorflow} was built for "
    f"cuDNN {build.cudnn}" in official
  ), official


@pytest.mark.multiprocess
def test_entrypoint_module_starts():
  result = subprocess.run(
    [sys.executable, "-m", "trainer.task", "--helpshort"],
    cwd=REPO,
    env=cli_env("/tmp"),
    capture_output=True,
    text=True,
    timeout=120,
  )
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
  assert "the package is not installed with --no-deps" in install_problems(
    with_deps
  )
  shell_form = parse_dockerfile(
    re.sub(r"ENTRYPOINT .*", "ENTRYPOINT python -m trainer.task", good)
  )
  with pytest.raises(json.JSONDecodeError):
    install_problems(shell_form)
  newer_setup = re.sub(
    r'"tensorflow[=<>!~][^"]*"', '"tensorflow>=2.17,<2.23"', _read("setup.py")
  )
  assert newer_setup != _read("setup.py")
  assert gpu_image_problems(parse_dockerfile(good), newer_setup)
  # Yesterday's base: the official image, plain TensorFlow, no CUDA wheels.
  official = re.sub(r"FROM .*", "FROM tensorflow/tensorflow:2.21.0-gpu", good)
  official = re.sub(
    r"'tensorflow\[and-cuda\]==2.21.0'(.|\n)*?nvjitlink-cu12==[\d.]+",
    "tensorflow==2.21.0",
    official,
  )
  problems = gpu_image_problems(parse_dockerfile(official), _read("setup.py"))
  assert any("FROM tensorflow/tensorflow:2.21.0-gpu" in p for p in problems)
  assert any(p.startswith("cuDNN missing") for p in problems), problems
  older_cudnn = good.replace(
    "nvidia-cudnn-cu12==9.3.0.75", "nvidia-cudnn-cu12==8.9.7.29"
  )
  assert "nvidia-cudnn-cu12==8.9.7.29, not 9.3.0.75 (launch/platforms.py)" in (
    gpu_image_problems(parse_dockerfile(older_cudnn), _read("setup.py"))
  )
