"""launch/platforms.py is the one table of platform facts: everything else
that names an image, a runtime or a version agrees with it."""

import ast
import glob
import os
import re

from conftest import REPO
import pytest

from launch import platforms


def _read(path):
  with open(os.path.join(REPO, path), encoding="utf-8") as f:
    return f.read()


def _texts():
  """{path: text} of every file that may name a platform fact."""
  paths = [
    "README.md",
    "Dockerfile",
    "Dockerfile.tpu",
    "setup.py",
    *glob.glob("docs/**/*.md", root_dir=REPO, recursive=True),
    *glob.glob("launch/*.py", root_dir=REPO),
    *glob.glob("trainer/*.py", root_dir=REPO),
  ]
  return {p: _read(p) for p in paths if p != "launch/platforms.py"}


def test_every_fact_has_a_source_and_a_checked_date():
  for row in platforms.rows():
    _, what, value, source, checked = row
    assert source and all(s.strip() for s in source.split(" ; ")), row
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", checked), row
    assert what and value, row


def test_the_docs_table_is_generated_from_the_table():
  page = _read(platforms.DOCS_PAGE)
  assert platforms.with_table(page) == page, (
    f"{platforms.DOCS_PAGE} is stale: run python -m launch.platforms --write"
  )


def test_the_staleness_check_sees_a_changed_fact(monkeypatch):
  """Negative control: a fact that changes makes the committed page stale."""
  page = _read(platforms.DOCS_PAGE)
  monkeypatch.setattr(
    platforms,
    "TPU_STACK",
    platforms.dataclasses.replace(platforms.TPU_STACK, libtpu="0.0.99"),
  )
  assert platforms.with_table(page) != page


VERTEX_IMAGE = re.compile(r"vertex-ai/(?:training|prediction)/[a-z0-9_.\-]+")


def test_every_vertex_image_named_anywhere_is_in_the_table():
  known = {
    image.uri.split("/vertex-ai/", 1)[1].split(":")[0]
    for image in (
      platforms.VERTEX_TRAINING_IMAGES + platforms.VERTEX_PREDICTION_IMAGES
    )
  }
  named = {
    (path, match.group(0).split("/vertex-ai/")[-1].split(":")[0])
    for path, text in _texts().items()
    for match in VERTEX_IMAGE.finditer("/" + text)
  }
  unknown = {
    (path, image)
    for path, image in named
    if image.removeprefix("vertex-ai/") not in known
  }
  assert not unknown, unknown


def test_tpu_pins_everywhere_are_the_tables():
  stack = platforms.TPU_STACK
  found = []
  for path, text in _texts().items():
    for name, want in (
      ("tensorflow-tpu", stack.tensorflow_tpu),
      ("libtpu", stack.libtpu),
    ):
      for version in re.findall(rf"\b{name}==([0-9][0-9.*]*)", text):
        found.append((path, name, version))
        assert version == want, (path, name, version, want)
  # (launch/colab.py reads the table; tests/colab_test.py checks what its
  # notebook installs.)
  paths = {path for path, _, _ in found}
  assert {"Dockerfile.tpu", "docs/platforms/tpu-vm.md"} <= paths, found


def test_tensorflow_with_cuda_wheels_everywhere_is_the_gpu_images():
  for path, text in _texts().items():
    for version in re.findall(r"tensorflow\[and-cuda\]==([0-9.]+)", text):
      assert version == platforms.GPU_IMAGE.tensorflow, (path, version)


GENERATIONS = {"v4": "v4", "v5litepod": "v5e", "v5p": "v5p", "v6e": "v6e"}


def tpu_vm_problems(page):
  """Each `tpu-vm create` command's --version against the table."""
  problems = []
  for command in re.findall(r"tpu-vm create[^\n]*\n[^\n]*", page):
    accelerator = re.search(r"--accelerator-type=(v\d+[a-z]*)-", command)
    version = re.search(r"--version=(\S+)", command)
    runtime = platforms.TPU_RUNTIMES[GENERATIONS[accelerator.group(1)]]
    if version.group(1).startswith("tpu-vm-tf-"):
      continue  # A TensorFlow pod runtime, picked by its version (see page).
    if runtime.version is None or version.group(1) != runtime.version:
      problems.append(
        f"{accelerator.group(1)}: --version={version.group(1)}, "
        f"table: {runtime.version}"
      )
  return problems


def test_tpu_vm_recipe_boots_each_generations_runtime():
  page = _read("docs/platforms/tpu-vm.md")
  assert "tpu-vm create" in page
  assert tpu_vm_problems(page) == []
  for generation, runtime in platforms.TPU_RUNTIMES.items():
    row = next(
      l for l in page.splitlines() if l.startswith(f"| {generation} |")
    )
    assert (
      f"`{runtime.version}`" if runtime.version else "not supported"
    ) in row, row
  # Negative control: yesterday's v5e command.
  old = page.replace(
    "--version=v2-alpha-tpuv5-lite", "--version=tpu-ubuntu2204-base"
  )
  assert tpu_vm_problems(old) == [
    "v5litepod: --version=tpu-ubuntu2204-base, table: v2-alpha-tpuv5-lite"
  ]


def test_setup_py_supports_the_tables_tensorflow_range():
  setup = ast.parse(_read("setup.py"))
  requires = next(
    ast.literal_eval(k.value)
    for node in ast.walk(setup)
    if isinstance(node, ast.Call)
    for k in node.keywords
    if k.arg == "install_requires"
  )
  tensorflow = next(r for r in requires if r.startswith("tensorflow>="))
  low, high = platforms.SUPPORTED_TENSORFLOW
  major, minor = high.split(".")
  assert tensorflow == f"tensorflow>={low},<{major}.{int(minor) + 1}"


@pytest.mark.parametrize(
  "version,inside",
  [("2.17", True), ("2.21.0", True), ("2.16", False), ("2.22.1", False)],
)
def test_supported_range(version, inside):
  assert platforms.in_supported_range(version) == inside
