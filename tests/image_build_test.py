"""The image launch.vertex builds: its context is exactly what the
Dockerfile copies, its tag a hash of that context, its tarball the same
bytes for the same files."""

import os
import shutil
import tarfile

import pytest

from launch import image_build
from launch import vertex


def _tree(root):
  """A small repository: a Dockerfile copying two files and a package."""
  (root / "pkg").mkdir(parents=True)
  (root / "pkg" / "__pycache__").mkdir()
  (root / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"x")
  (root / "pkg" / "a.py").write_text("A = 1\n")
  (root / "setup.py").write_text("setup()\n")
  (root / "README.md").write_text("read me\n")
  (root / "notes.txt").write_text("not copied\n")
  (root / "Dockerfile").write_text(
    "FROM python:3.11-slim\n"
    "RUN pip install \\\n    numpy  # a comment\n"
    "COPY setup.py README.md ./\n"
    "COPY --chown=1000 pkg/ pkg/\n"
    'ENTRYPOINT ["python"]\n'
  )
  return root


def test_the_context_is_what_the_dockerfile_copies(tmp_path):
  root = _tree(tmp_path / "repo")
  files = image_build.context_files("Dockerfile", str(root))
  assert files == ("Dockerfile", "README.md", "pkg/a.py", "setup.py")


def test_the_tag_follows_the_content_and_nothing_else(tmp_path):
  root = _tree(tmp_path / "repo")
  files = image_build.context_files("Dockerfile", str(root))
  before = image_build.content_hash(files, str(root))
  # Negative control: a file the Dockerfile does not copy changes nothing.
  (root / "notes.txt").write_text("changed\n")
  (root / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"y")
  assert (
    image_build.content_hash(
      image_build.context_files("Dockerfile", str(root)), str(root)
    )
    == before
  )
  (root / "pkg" / "a.py").write_text("A = 2\n")
  changed = image_build.content_hash(files, str(root))
  assert changed != before and len(changed) == image_build.HASH_LENGTH
  (root / "pkg" / "a.py").write_text("A = 1\n")
  (root / "pkg" / "b.py").write_text("B = 1\n")  # A new copied file.
  assert image_build.content_hash(
    image_build.context_files("Dockerfile", str(root)), str(root)
  ) not in (before, changed)


def test_the_tarball_holds_exactly_the_context_and_is_reproducible(tmp_path):
  options = vertex.default_options(
    project="proj",
    staging_bucket="gs://bkt/staging",
    base_output_dir="gs://bkt/runs/1",
  )
  build = image_build.plan(options)
  first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
  image_build.write_context(build, str(first))
  image_build.write_context(build, str(second))
  assert first.read_bytes() == second.read_bytes()
  with tarfile.open(first) as archive:
    names = sorted(archive.getnames())
  assert names == sorted(build.files)
  assert {"Dockerfile", "setup.py", "README.md", "trainer/task.py"} <= set(
    names
  )
  assert not [n for n in names if n.startswith("tests/") or ".pyc" in n]
  assert build.image == (
    f"us-central1-docker.pkg.dev/proj/alexnet/alexnet-tf:{build.content_hash}"
  )
  assert build.context_uri == (
    f"gs://bkt/staging/alexnet-tf-build/{build.content_hash}.tar.gz"
  )


def test_tpu_pools_build_the_tpu_dockerfile(tmp_path):
  options = vertex.default_options(
    project="proj",
    base_output_dir="gs://bkt/runs/1",
    accelerator_type="TPU_V3",
  )
  build = image_build.plan(options)
  assert build.dockerfile == "Dockerfile.tpu"
  assert "/alexnet-tf-tpu:" in build.image
  assert "Dockerfile" not in build.files  # Only what this build reads.
  # Staging falls back to the output dir.
  assert build.context_uri.startswith("gs://bkt/runs/1/alexnet-tf-tpu-build/")


def test_a_checkout_without_the_dockerfile_says_so(tmp_path):
  shutil.copytree(_tree(tmp_path / "repo"), tmp_path / "bare")
  os.remove(tmp_path / "bare" / "Dockerfile")
  try:
    image_build.context_files("Dockerfile", str(tmp_path / "bare"))
  except FileNotFoundError as e:
    assert "built from a clone of the repository" in str(e)
  else:
    raise AssertionError("no error")


def test_no_wait_builds_end_with_a_step_that_submits_the_same_job():
  options = vertex.default_options(
    project="proj", base_output_dir="gs://bkt/runs/1"
  )
  build = image_build.plan(options)
  job = {"displayName": "j", "jobSpec": {"args": ["--note=$HOME costs"]}}
  request = image_build.build_request(
    build, then_submit=("https://r-aiplatform.googleapis.com/v1/x", job)
  )
  steps = request["steps"]
  assert [s["args"][0] for s in steps[1:4]] == ["build", "push", "push"]
  script = steps[4]["args"][1]
  # Cloud Build's substitution turns $$ back into $.
  unescaped = script.replace("$$", "$")
  assert '"--note=$HOME costs"' in unescaped
  assert "$(gcloud auth print-access-token)" in unescaped
  assert "$" not in script.replace("$$", "")
  assert unescaped.rstrip().endswith("https://r-aiplatform.googleapis.com/v1/x")


def test_a_rebuild_starts_from_the_last_image_built():
  """Cloud Build machines start empty: the build pulls ":latest" (if there
  is one) and builds from its layers, and tags and pushes the new image as
  ":latest" too."""
  options = vertex.default_options(
    project="proj", base_output_dir="gs://bkt/runs/1"
  )
  build = image_build.plan(options)
  latest = "us-central1-docker.pkg.dev/proj/alexnet/alexnet-tf:latest"
  steps = image_build.build_request(build)["steps"]
  assert steps[0]["args"] == ["-c", f"docker pull {latest} || exit 0"]
  assert steps[1]["args"] == [
    "build", "-f", "Dockerfile", "--cache-from", latest,
    "--build-arg", "BUILDKIT_INLINE_CACHE=1",
    "-t", build.image, "-t", latest, ".",
  ]  # fmt: skip
  assert [s["args"] for s in steps[2:]] == [
    ["push", build.image],
    ["push", latest],
  ]


@pytest.mark.parametrize(
  "line",
  [
    "ADD pkg/ pkg/",
    'COPY ["setup.py", "./"]',
    "COPY --from=builder /wheels /wheels",
    "COPY /etc/passwd ./",
    "COPY ../secrets ./",
  ],
)
def test_what_the_hash_cannot_follow_is_refused(tmp_path, line):
  root = _tree(tmp_path / "repo")
  (root / "Dockerfile").write_text(f"FROM python:3.11-slim\n{line}\n")
  with pytest.raises(ValueError):
    image_build.context_files("Dockerfile", str(root))


@pytest.mark.multiprocess  # bash runs the step
def test_the_no_wait_step_posts_the_job_as_written(tmp_path):
  """The build's last step, run by bash as Cloud Build would (after its $$
  substitution), with stand-ins for gcloud and curl on PATH: curl posts
  exactly the job request, with the build account's token, to Vertex AI.
  (Cloud Build's /workspace is a scratch directory here.)"""
  import json
  import stat
  import subprocess

  options = vertex.default_options(
    project="proj", base_output_dir="gs://bkt/runs/1"
  )
  build = image_build.plan(options)
  job = {"displayName": "j", "jobSpec": {"args": ["--note=$HOME's 'x'"]}}
  url = "https://us-central1-aiplatform.googleapis.com/v1/projects/proj/x"
  (step,) = image_build.build_request(build, then_submit=(url, job))["steps"][
    4:
  ]
  script = step["args"][1].replace("$$", "$")
  script = script.replace("/workspace", str(tmp_path))
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  stubs = {
    "gcloud": "#!/bin/sh\necho token-123\n",
    "curl": '#!/bin/sh\nprintf "%s\\n" "$@" > "$CURL_ARGS"\n'
    'for a in "$@"; do case "$a" in @*) cp "${a#@}" "$CURL_BODY";; esac; done\n',
  }
  for name, text in stubs.items():
    path = bin_dir / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
  result = subprocess.run(
    ["bash", "-c", script],
    env={
      "PATH": f"{bin_dir}:/usr/bin:/bin",
      "CURL_ARGS": str(tmp_path / "args"),
      "CURL_BODY": str(tmp_path / "body"),
    },
    capture_output=True,
    text=True,
    timeout=30,
  )
  assert result.returncode == 0, result.stderr
  args = (tmp_path / "args").read_text().splitlines()
  assert args[-1] == url
  assert "Authorization: Bearer token-123" in args
  assert "--fail-with-body" in args
  assert json.loads((tmp_path / "body").read_text()) == job
