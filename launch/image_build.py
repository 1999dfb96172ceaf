"""This package's training image, as a build: which Dockerfile, the files it
copies (its build context), the content hash that tags it, the context
tarball and the Cloud Build request that builds and pushes it.

A tag is a hash of everything that goes into the image (the Dockerfile and
every file its COPY lines name), so an unchanged tree reuses the image in
Artifact Registry and any change builds a new one. Local work only: the
calls to Google Cloud are launch/cloud_build.py's.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import shlex
import tarfile
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_DOCKERFILE = "Dockerfile"  # CUDA base: GPU and CPU machines.
TPU_DOCKERFILE = "Dockerfile.tpu"  # tensorflow-tpu, for TPU VMs.
IMAGE_NAMES = {GPU_DOCKERFILE: "alexnet-tf", TPU_DOCKERFILE: "alexnet-tf-tpu"}
DOCKER_BUILDER = "gcr.io/cloud-builders/docker"
CLOUD_SDK = "gcr.io/google.com/cloudsdktool/cloud-sdk:slim"
# A first CUDA image (a ~3 GB base and TensorFlow's wheels) takes minutes;
# a larger build machine makes that shorter than the default e2-medium.
BUILD_MACHINE = "E2_HIGHCPU_8"
BUILD_TIMEOUT_SECS = 3600
HASH_LENGTH = 16
# Never part of an image: caches the interpreter or the tests leave behind.
SKIPPED_PARTS = ("__pycache__", ".pytest_cache", ".mypy_cache")


@dataclasses.dataclass(frozen=True)
class ImageBuild:
  """The image a job runs on, and how it is built if Artifact Registry does
  not have it yet."""

  dockerfile: str  # relative to the repository
  files: tuple[str, ...]  # the build context, relative paths, sorted
  content_hash: str
  image: str  # REGION-docker.pkg.dev/PROJECT/REPOSITORY/NAME:HASH
  context_uri: str  # gs:// path of the context tarball

  @property
  def name(self) -> str:
    return IMAGE_NAMES[self.dockerfile]

  @property
  def tag(self) -> str:
    return self.content_hash


def copied_paths(dockerfile_text: str) -> list[str]:
  """The sources of the Dockerfile's COPY lines (files or directories)."""
  sources = []
  for line in dockerfile_text.splitlines():
    words = line.split("#", 1)[0].split()
    if not words or words[0].upper() not in ("COPY", "ADD"):
      continue
    # What the hash cannot follow is refused, not silently left out.
    if (
      words[0].upper() == "ADD"
      or words[1].startswith("[")
      or any(w.startswith("--from") for w in words)
    ):
      raise ValueError(
        f"cannot tell the files of {line.strip()!r}: the image's tag "
        "hashes plain COPY SOURCE... DEST lines only"
      )
    arguments = [w for w in words[1:] if not w.startswith("--")]
    for source in arguments[:-1]:  # The last is the destination.
      if os.path.isabs(source) or ".." in source.split("/"):
        raise ValueError(f"COPY source {source!r} is outside the build context")
      sources.append(source)
  return sources


def context_files(dockerfile: str, repo: str = REPO) -> tuple[str, ...]:
  """The Dockerfile and every file its COPY lines name, relative to `repo`,
  sorted: exactly what the build reads."""
  path = os.path.join(repo, dockerfile)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"no {dockerfile} in {repo}: the image is built from a clone of the "
      "repository (or pass --container_image=URI)"
    )
  with open(path, encoding="utf-8") as f:
    sources = copied_paths(f.read())
  files = {dockerfile}
  for source in sources:
    path = os.path.join(repo, source)
    if os.path.isfile(path):
      files.add(os.path.normpath(source))
      continue
    if not os.path.isdir(path):
      raise FileNotFoundError(f"{dockerfile} copies {source}, which is missing")
    for root, directories, names in os.walk(path):
      directories[:] = sorted(d for d in directories if d not in SKIPPED_PARTS)
      for name in names:
        if name.endswith(".pyc"):
          continue
        files.add(os.path.relpath(os.path.join(root, name), repo))
  return tuple(sorted(files))


def content_hash(files: tuple[str, ...], repo: str = REPO) -> str:
  """A hash of the files' paths, executable bits and bytes."""
  digest = hashlib.sha256()
  for relative in files:
    path = os.path.join(repo, relative)
    with open(path, "rb") as f:
      content = hashlib.sha256(f.read()).hexdigest()
    executable = os.stat(path).st_mode & 0o111 != 0
    digest.update(f"{relative}\0{int(executable)}\0{content}\n".encode())
  return digest.hexdigest()[:HASH_LENGTH]


def plan(
  options: dict, repo: str = REPO, tpu: bool | None = None
) -> ImageBuild:
  """The image for a launcher's options (project, region, repository,
  staging_bucket or base_output_dir): Dockerfile.tpu for TPUs (`tpu`, or
  launch.vertex's TPU --accelerator_type), else the Dockerfile; tagged by
  content in the repository."""
  if tpu is None:
    from launch.vertex_checks import TPU_MACHINES

    tpu = options["accelerator_type"] in TPU_MACHINES
  dockerfile = TPU_DOCKERFILE if tpu else GPU_DOCKERFILE
  files = context_files(dockerfile, repo)
  tag = content_hash(files, repo)
  name = IMAGE_NAMES[dockerfile]
  image = (
    f"{options['region']}-docker.pkg.dev/{options['project']}/"
    f"{options['repository']}/{name}:{tag}"
  )
  staging = (
    options.get("staging_bucket") or options.get("base_output_dir") or ""
  )
  return ImageBuild(
    dockerfile=dockerfile,
    files=files,
    content_hash=tag,
    image=image,
    context_uri=(
      f"{staging.rstrip('/')}/{name}-build/{tag}.tar.gz" if staging else ""
    ),
  )


def write_context(build: ImageBuild, out_path: str, repo: str = REPO) -> None:
  """The build context as a reproducible .tar.gz (the same files give the
  same bytes: no times, owners or local modes beyond the executable bit)."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w") as archive:
    for relative in build.files:
      path = os.path.join(repo, relative)
      with open(path, "rb") as source:
        content = source.read()
      info = tarfile.TarInfo(relative)
      info.size = len(content)
      info.mode = 0o755 if os.stat(path).st_mode & 0o111 else 0o644
      info.mtime = 0
      archive.addfile(info, io.BytesIO(content))
  with (
    open(out_path, "wb") as f,
    gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz,
  ):
    gz.write(buffer.getvalue())


def build_request(
  build: ImageBuild,
  build_service_account: str = "",
  project: str = "",
  then_submit: tuple[str, dict] | None = None,
) -> dict:
  """The Cloud Build request (REST JSON) that builds and pushes the image.

  Args:
    build: the plan.
    build_service_account: the account the build runs as; empty = the
      project's default.
    project: the project (names the account's resource).
    then_submit: (Vertex AI REST URL, request body): a last step posts the
      job once the image is pushed (launch.vertex --no_wait).
  """
  if not build.context_uri.startswith("gs://"):
    raise ValueError("no gs:// staging path for the build context")
  bucket, _, name = build.context_uri[len("gs://") :].partition("/")
  # Each build runs on a fresh machine: the last image built (":latest")
  # is pulled first so that a code change rebuilds only the layers from the
  # COPY lines on, not the CUDA and TensorFlow layers.
  latest = build.image.rsplit(":", 1)[0] + ":latest"
  steps = [
    {
      "name": DOCKER_BUILDER,
      "entrypoint": "bash",
      "args": ["-c", f"docker pull {latest} || exit 0"],
    },
    {
      "name": DOCKER_BUILDER,
      "args": [
        "build",
        "-f",
        build.dockerfile,
        "--cache-from",
        latest,
        # Layer cache metadata in the image, so that the next build's
        # --cache-from can use it under BuildKit too.
        "--build-arg",
        "BUILDKIT_INLINE_CACHE=1",
        "-t",
        build.image,
        "-t",
        latest,
        ".",
      ],
    },
    {"name": DOCKER_BUILDER, "args": ["push", build.image]},
    {"name": DOCKER_BUILDER, "args": ["push", latest]},
  ]
  if then_submit:
    url, body = then_submit
    steps.append(_submit_step(url, body))
  options: dict[str, str] = {"machineType": BUILD_MACHINE}
  request: dict[str, Any] = {
    "source": {"storageSource": {"bucket": bucket, "object": name}},
    "steps": steps,
    "images": [build.image, latest],
    "timeout": f"{BUILD_TIMEOUT_SECS}s",
    "options": options,
    "tags": [build.name, build.content_hash],
  }
  if build_service_account:
    request["serviceAccount"] = (
      f"projects/{project}/serviceAccounts/{build_service_account}"
    )
    # A build with its own account must say where its logs go.
    options["logging"] = "CLOUD_LOGGING_ONLY"
  return request


def _submit_step(url: str, body: dict) -> dict:
  """A build step that posts `body` to Vertex AI as the build's account."""
  script = (
    "cat > /workspace/job.json <<'JOB'\n"
    f"{json.dumps(body, indent=1)}\n"
    "JOB\n"
    'curl -sS --fail-with-body -X POST -H "Authorization: Bearer '
    '$(gcloud auth print-access-token)" '
    '-H "Content-Type: application/json" '
    f"--data @/workspace/job.json {shlex.quote(url)}\n"
  )
  # Cloud Build substitutes $NAME in arguments; $$ is a literal $.
  return {
    "name": CLOUD_SDK,
    "entrypoint": "bash",
    "args": ["-c", script.replace("$", "$$")],
  }
