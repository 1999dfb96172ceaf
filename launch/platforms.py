"""Facts about other people's platforms, each with its source and the date it
was checked: the one table the launchers, the Dockerfiles' tests, the
notebook and the docs read.

Platforms move: images reach end of availability, runtimes drop TensorFlow,
base images carry another cuDNN. A fact here is data, not code: when a
platform changes, the row changes (with a new source and date), and the
tests that hold the Dockerfiles, the notebook and the docs to this table
say what else must follow.

"Checked" is the day the source was read (through a stored copy of the
page; `note` says where a fact could not be re-checked). Never imports
TensorFlow.
"""

from __future__ import annotations

import dataclasses
import datetime

CHECKED = "2026-12-06"

# The sources, named once.
VERTEX_TRAINING_CONTAINERS = (
  "https://docs.cloud.google.com/gemini-enterprise-agent-platform/"
  "machine-learning/training/pre-built-containers"
)
VERTEX_SUPPORT_POLICY = (
  "https://docs.cloud.google.com/gemini-enterprise-agent-platform/"
  "machine-learning/framework-support-policy"
)
VERTEX_PREDICTION_CONTAINERS = (
  "https://docs.cloud.google.com/gemini-enterprise-agent-platform/"
  "machine-learning/predictions/pre-built-containers"
)
VERTEX_TPU_TRAINING = (
  "https://cloud.google.com/vertex-ai/docs/training/training-with-tpu-vm"
)
TF_TESTED_BUILDS = (
  "https://github.com/tensorflow/docs/blob/"
  "7c3650212740204359d4ceae481abc79345541be/site/en/"
  "install/source.md"
)
TF_GPU_DOCKERFILE = (
  "https://github.com/tensorflow/build/blob/"
  "5b1c753062b893203406f11a3ee52de63dc6eab3/"
  "tensorflow_runtime_dockerfiles/gpu.packages.txt"
)
NVIDIA_CUDA_TAGS = (
  "https://gitlab.com/nvidia/container-images/cuda/-/blob/"
  "master/doc/supported-tags.md"
)
CLOUD_TPU_RUNTIMES = "https://cloud.google.com/tpu/docs/runtimes"
COLAB_TPU_WITHOUT_TF = "https://github.com/googlecolab/colabtools/issues/5164"
COLAB_RUNTIME_PACKAGES = (
  "https://github.com/googlecolab/backend-info/blob/"
  "a72407924822ea377410b69f0a290150bcb5c9c2/"
  "pip-freeze.txt"
)
PYPI = "https://pypi.org/project/{name}/"
GKE_TPUS = "https://cloud.google.com/kubernetes-engine/docs/concepts/plan-tpus"
GKE_GPUS = "https://cloud.google.com/kubernetes-engine/docs/how-to/gpus"
JOBSET_RELEASE = (
  "https://github.com/kubernetes-sigs/jobset/releases/tag/v0.12.0"
)
CLOUD_BUILD_PRICING = "https://cloud.google.com/build/pricing"
ARTIFACT_REGISTRY_PRICING = "https://cloud.google.com/artifact-registry/pricing"


@dataclasses.dataclass(frozen=True)
class Image:
  """A prebuilt image of someone else's that a job could run on."""

  uri: str
  tensorflow: str
  python: str
  accelerator: str  # cpu | gpu | tpu
  end_of_availability: str | None  # ISO date; None = none published
  source: str
  checked: str = CHECKED
  note: str = ""

  def expired(self, today: datetime.date) -> bool:
    return (
      self.end_of_availability is not None
      and datetime.date.fromisoformat(self.end_of_availability) <= today
    )


# Vertex AI's newest prebuilt TensorFlow training images. The policy: after
# the end of availability "you can no longer use images for this framework
# version. Services might block the creation of new resources using these
# images" (VERTEX_SUPPORT_POLICY). No newer row is published; the TPU
# training images stop at TensorFlow 2.15, and there are none for v5e.
VERTEX_TRAINING_IMAGES = (
  Image(
    "us-docker.pkg.dev/vertex-ai/training/tf-cpu.2-17.py310:latest",
    "2.17",
    "3.10",
    "cpu",
    "2026-07-11",
    VERTEX_TRAINING_CONTAINERS,
  ),
  Image(
    "us-docker.pkg.dev/vertex-ai/training/tf-gpu.2-17.py310:latest",
    "2.17",
    "3.10",
    "gpu",
    "2026-07-11",
    VERTEX_TRAINING_CONTAINERS,
    note="CUDA 12.x",
  ),
  Image(
    "us-docker.pkg.dev/vertex-ai/training/tf-cpu.2-16.py310:latest",
    "2.16",
    "3.10",
    "cpu",
    "2026-06-28",
    VERTEX_TRAINING_CONTAINERS,
  ),
  Image(
    "us-docker.pkg.dev/vertex-ai/training/tf-gpu.2-16.py310:latest",
    "2.16",
    "3.10",
    "gpu",
    "2026-06-28",
    VERTEX_TRAINING_CONTAINERS,
  ),
  Image(
    "us-docker.pkg.dev/vertex-ai/training/tf-tpu.2-15.cp310:latest",
    "2.15",
    "3.10",
    "tpu",
    "2025-10-23",
    VERTEX_TRAINING_CONTAINERS,
  ),
)

# Vertex AI's newest prebuilt TensorFlow prediction (serving) images.
VERTEX_PREDICTION_IMAGES = (
  Image(
    "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest",
    "2.15",
    "",
    "cpu",
    "2027-01-14",
    VERTEX_PREDICTION_CONTAINERS,
    note="end of patch: July 14, 2026 in the newer copy of the page, "
    "Jan 14, 2026 in an older one",
  ),
  Image(
    "us-docker.pkg.dev/vertex-ai/prediction/tf2-gpu.2-15:latest",
    "2.15",
    "",
    "gpu",
    "2027-01-14",
    VERTEX_PREDICTION_CONTAINERS,
    note="CUDA 12.x",
  ),
)


def vertex_image(uri: str) -> Image | None:
  """The table's row of a Vertex prebuilt image (any region's copy)."""
  tail = uri.split("/vertex-ai/", 1)[-1]
  for image in VERTEX_TRAINING_IMAGES + VERTEX_PREDICTION_IMAGES:
    if image.uri.split("/vertex-ai/", 1)[-1] == tail:
      return image
  return None


@dataclasses.dataclass(frozen=True)
class CudaBuild:
  """What a TensorFlow release was built and tested with (TF_TESTED_BUILDS):
  the CUDA and cuDNN its GPU kernels need at run time."""

  tensorflow: str
  cuda: str
  cudnn: str
  python: str
  source: str = TF_TESTED_BUILDS
  checked: str = CHECKED


TENSORFLOW_CUDA_BUILDS = {
  "2.21": CudaBuild("2.21", "12.5", "9.3", "3.10-3.13"),
  "2.20": CudaBuild("2.20", "12.5", "9.3", "3.9-3.13"),
  "2.19": CudaBuild("2.19", "12.5", "9.3", "3.9-3.12"),
  "2.18": CudaBuild("2.18", "12.5", "9.3", "3.9-3.12"),
  "2.17": CudaBuild("2.17", "12.3", "8.9", "3.9-3.12"),
}


@dataclasses.dataclass(frozen=True)
class GpuImage:
  """How our GPU image gets the CUDA and cuDNN its TensorFlow needs."""

  base: str
  python: str
  tensorflow: str
  # The tensorflow[and-cuda] wheels, pinned at the versions TensorFlow
  # declares as its minimum (its tested build): the CUDA runtime and cuDNN
  # come from these, not from the base image.
  cuda_wheels: dict[str, str]
  source: str
  checked: str = CHECKED
  note: str = ""


GPU_IMAGE = GpuImage(
  # CUDA 12.5, TensorFlow 2.21's build: the base brings the NVIDIA
  # container settings and the driver's forward compatibility, the wheels
  # bring the libraries.
  base="nvidia/cuda:12.5.1-base-ubuntu22.04",
  python="3.10",  # Ubuntu 22.04's python3
  tensorflow="2.21.0",
  cuda_wheels={
    "nvidia-cublas-cu12": "12.5.3.2",
    "nvidia-cuda-cupti-cu12": "12.5.82",
    "nvidia-cuda-nvcc-cu12": "12.5.82",
    "nvidia-cuda-nvrtc-cu12": "12.5.82",
    "nvidia-cuda-runtime-cu12": "12.5.82",
    "nvidia-cudnn-cu12": "9.3.0.75",
    "nvidia-cufft-cu12": "11.2.3.61",
    "nvidia-curand-cu12": "10.3.6.82",
    "nvidia-cusolver-cu12": "11.6.3.83",
    "nvidia-cusparse-cu12": "12.5.1.3",
    "nvidia-nccl-cu12": "2.27.7",
    "nvidia-nvjitlink-cu12": "12.5.82",
  },
  source=NVIDIA_CUDA_TAGS + " ; tensorflow 2.21.0 wheel METADATA (and-cuda)",
  note="the 12.5.1-base-ubuntu22.04 tag is listed as supported as of Dec "
  "2024; its presence on Docker Hub today was not re-checked (NVIDIA "
  "deletes tags six months after their end of life)",
)

# The official tensorflow/tensorflow:X.Y.Z-gpu images: nvidia/cuda:12.3.0
# base, system libcudnn8 8.9.6.50, then a plain `pip install tensorflow`
# (TF_GPU_DOCKERFILE) - cuDNN 8.9 for a TensorFlow built with cuDNN 9
# (tensorflow/build#221, tensorflow/tensorflow#62412). Kept to show what
# the GPU image check refuses.
OFFICIAL_TF_GPU_IMAGE_LIBRARIES = {"cuda": "12.3", "cudnn": "8.9.6.50"}


@dataclasses.dataclass(frozen=True)
class TpuStack:
  """tensorflow-tpu and the libtpu it was released with."""

  tensorflow_tpu: str
  libtpu: str
  python: str
  # Where Vertex AI's TPU training page says the library must be.
  libtpu_path: str
  source: str
  checked: str = CHECKED
  note: str = ""


TPU_STACK = TpuStack(
  tensorflow_tpu="2.20.0",
  # tensorflow-tpu 2.20.0 (built 2025-08-07) requires libtpu~=0.0.14,
  # which today resolves to 0.0.52; 0.0.20 (2025-08-01) was the newest
  # libtpu when 2.20.0 came out.
  libtpu="0.0.20",
  python="3.11",
  libtpu_path="/lib/libtpu.so",
  source=PYPI.format(name="tensorflow-tpu")
  + " ; "
  + PYPI.format(name="libtpu")
  + " ; "
  + VERTEX_TPU_TRAINING,
  note="paired by the wheels' build dates (PyPI upload dates could not be "
  "read here); no tensorflow-tpu 2.21 exists",
)


@dataclasses.dataclass(frozen=True)
class TpuRuntime:
  """The Cloud TPU VM software version (`--version`) of a TPU generation."""

  generation: str
  accelerator_example: str
  version: str | None  # None: TensorFlow does not train on it
  source: str = CLOUD_TPU_RUNTIMES
  checked: str = CHECKED
  note: str = ""


TPU_RUNTIMES = {
  "v4": TpuRuntime("v4", "v4-8", "tpu-ubuntu2204-base"),
  "v5e": TpuRuntime("v5e", "v5litepod-8", "v2-alpha-tpuv5-lite"),
  "v5p": TpuRuntime("v5p", "v5p-8", "v2-alpha-tpuv5"),
  "v6e": TpuRuntime(
    "v6e",
    "v6e-8",
    None,
    source=VERTEX_TPU_TRAINING,
    note="\"Starting with TPU v6e, TensorFlow is no longer supported.\"",
  ),
}


@dataclasses.dataclass(frozen=True)
class ColabRuntime:
  """What a Colab runtime brings."""

  kind: str  # cpu_gpu | tpu
  tensorflow: str | None  # None: not pre-installed
  python: str
  source: str
  checked: str = CHECKED
  note: str = ""


COLAB_RUNTIMES = {
  "cpu_gpu": ColabRuntime(
    "cpu_gpu",
    "2.20.0",
    "3.13",
    COLAB_RUNTIME_PACKAGES,
    note="the runtime snapshot of 2026-08-19 (backend-info reflects the "
    "latest submitted change, not necessarily what serves)",
  ),
  "tpu": ColabRuntime(
    "tpu",
    None,
    "3.13",
    COLAB_TPU_WITHOUT_TF,
    note="\"for TPU runtimes, TensorFlow will no longer be "
    "pre-installed\"; installing tensorflow-tpu there was not verified "
    "(googlecolab/colabtools#5419)",
  ),
}


# The range this package supports (setup.py holds the same pins).
SUPPORTED_TENSORFLOW = ("2.17", "2.21")


def in_supported_range(version: str) -> bool:
  """Whether TensorFlow `version` (X.Y or X.Y.Z) is in the package's range."""
  major_minor = tuple(int(p) for p in version.split(".")[:2])
  low, high = (
    tuple(int(p) for p in v.split(".")) for v in SUPPORTED_TENSORFLOW
  )
  return low <= major_minor <= high


def cuda_stack_problems(
  build: CudaBuild, libraries: dict[str, str]
) -> list[str]:
  """Why `libraries` ({"cuda": version, "cudnn": version} as an image
  provides them) cannot run TensorFlow `build`'s GPU kernels; [] if they can.

  CUDA 12 libraries are minor-version compatible within 12.x from the build's
  minor version up; cuDNN must have the build's major version and at least
  its minor."""
  problems = []

  def parts(version):
    return tuple(int(p) for p in version.split(".")[:2])

  for name, key, built in (
    ("CUDA", "cuda", build.cuda),
    ("cuDNN", "cudnn", build.cudnn),
  ):
    have = libraries.get(key)
    if (
      not have
      or parts(have)[0] != parts(built)[0]
      or parts(have) < parts(built)
    ):
      problems.append(
        f"{name} {have or 'missing'}: TensorFlow {build.tensorflow} "
        f"was built for {name} {built}"
      )
  return problems


def wheel_libraries(versions: dict[str, str]) -> dict[str, str]:
  """{"cuda", "cudnn"} versions from resolved nvidia-*-cu12 wheel versions."""
  libraries = {}
  if "nvidia-cuda-runtime-cu12" in versions:
    libraries["cuda"] = versions["nvidia-cuda-runtime-cu12"]
  if "nvidia-cudnn-cu12" in versions:
    libraries["cudnn"] = versions["nvidia-cudnn-cu12"]
  return libraries


def rows() -> list[tuple[str, str, str, str, str]]:
  """(platform, fact, value, source, checked) for the docs' table."""
  out = []
  for image in VERTEX_TRAINING_IMAGES:
    out.append(
      (
        "Vertex AI training image",
        image.uri,
        f"TF {image.tensorflow}, Python {image.python}; end of "
        f"availability {image.end_of_availability}"
        + (f" ({image.note})" if image.note else ""),
        image.source,
        image.checked,
      )
    )
  for image in VERTEX_PREDICTION_IMAGES:
    out.append(
      (
        "Vertex AI prediction image",
        image.uri,
        f"TF {image.tensorflow}; end of availability "
        f"{image.end_of_availability}"
        + (f" ({image.note})" if image.note else ""),
        image.source,
        image.checked,
      )
    )
  for build in TENSORFLOW_CUDA_BUILDS.values():
    out.append(
      (
        "TensorFlow GPU build",
        f"TensorFlow {build.tensorflow}",
        f"CUDA {build.cuda}, cuDNN {build.cudnn}, Python {build.python}",
        build.source,
        build.checked,
      )
    )
  gpu = GPU_IMAGE
  out.append(
    (
      "Our GPU image (Dockerfile)",
      gpu.base,
      f"Python {gpu.python}, tensorflow[and-cuda]=={gpu.tensorflow}"
      f", nvidia-cudnn-cu12=={gpu.cuda_wheels['nvidia-cudnn-cu12']}"
      f", nvidia-cuda-runtime-cu12=="
      f"{gpu.cuda_wheels['nvidia-cuda-runtime-cu12']} ({gpu.note})",
      gpu.source,
      gpu.checked,
    )
  )
  stack = TPU_STACK
  out.append(
    (
      "Our TPU image (Dockerfile.tpu), TPU VMs, Colab TPU",
      f"tensorflow-tpu=={stack.tensorflow_tpu}",
      f"libtpu=={stack.libtpu} at {stack.libtpu_path}, Python "
      f"{stack.python} ({stack.note})",
      stack.source,
      stack.checked,
    )
  )
  for runtime in TPU_RUNTIMES.values():
    out.append(
      (
        "Cloud TPU VM runtime",
        f"TPU {runtime.generation}",
        f"--version={runtime.version}"
        if runtime.version
        else f"TensorFlow training not supported ({runtime.note})",
        runtime.source,
        runtime.checked,
      )
    )
  for colab in COLAB_RUNTIMES.values():
    label = "CPU/GPU" if colab.kind == "cpu_gpu" else "TPU"
    out.append(
      (
        f"Colab {label} runtime",
        f"Python {colab.python}",
        (
          f"TensorFlow {colab.tensorflow}"
          if colab.tensorflow
          else "no TensorFlow"
        )
        + f" ({colab.note})",
        colab.source,
        colab.checked,
      )
    )
  for tpu in GKE_TPU_SLICES:
    out.append(
      (
        "GKE TPU slice, one host",
        f"{tpu.accelerator} {tpu.topology}",
        f"{tpu.chips} chip(s) on one node: google.com/tpu: {tpu.chips}",
        tpu.source,
        tpu.checked,
      )
    )
  out.append(
    (
      "GKE GPU node label",
      "cloud.google.com/gke-accelerator",
      ", ".join(GKE_GPU_ACCELERATORS),
      GKE_GPUS,
      CHECKED,
    )
  )
  out.append(
    (
      "JobSet",
      f"jobset.x-k8s.io/v1alpha2, {JOBSET_VERSION}",
      "the CRD schema the generated JobSets are validated against "
      "(tests/schemas)",
      JOBSET_RELEASE,
      CHECKED,
    )
  )
  for price in PRICES:
    out.append(
      (
        "Google Cloud price",
        price.service,
        f"USD {price.usd} {price.unit} ({price.note})",
        price.source,
        price.checked,
      )
    )
  return out


@dataclasses.dataclass(frozen=True)
class GkeTpuSlice:
  """A GKE TPU slice launch.k8s can run: one host (TensorFlow drives a
  multi-host slice from one client process, which a pod per host is not)."""

  accelerator: str  # the cloud.google.com/gke-tpu-accelerator value
  topology: str  # the cloud.google.com/gke-tpu-topology value
  chips: int  # google.com/tpu per pod: the whole slice on its one host
  source: str = GKE_TPUS
  checked: str = CHECKED


GKE_TPU_SLICES = (
  GkeTpuSlice("tpu-v5-lite-podslice", "1x1", 1),
  GkeTpuSlice("tpu-v5-lite-podslice", "2x2", 4),
  GkeTpuSlice("tpu-v5-lite-podslice", "2x4", 8),
  GkeTpuSlice("tpu-v4-podslice", "2x2x1", 4),
)
# cloud.google.com/gke-accelerator values of the GPUs GKE offers that this
# package's image runs (TensorFlow 2.18+: compute capability 6.0 and up).
GKE_GPU_ACCELERATORS = (
  "nvidia-tesla-t4",
  "nvidia-tesla-v100",
  "nvidia-l4",
  "nvidia-tesla-a100",
  "nvidia-a100-80gb",
  "nvidia-h100-80gb",
  "nvidia-h100-mega-80gb",
)
# The JobSet release whose CRD schema tests/schemas holds (launch.k8s writes
# jobset.x-k8s.io/v1alpha2 objects).
JOBSET_VERSION = "v0.12.0"
# The Kubernetes version the core objects are validated against
# (kubernetes-validate's bundled schemas).
KUBERNETES_VERSION = "1.33"


@dataclasses.dataclass(frozen=True)
class Price:
  """A list price (USD) of a service launch.vertex's image build uses."""

  service: str
  usd: float
  unit: str
  source: str
  checked: str = CHECKED
  note: str = ""


# launch.vertex builds on E2_HIGHCPU_8 (launch/image_build.py BUILD_MACHINE)
# and keeps one image per content hash in Artifact Registry.
CLOUD_BUILD_MINUTE = Price(
  "Cloud Build, e2-highcpu-8 (default pool)",
  0.016,
  "per build-minute",
  CLOUD_BUILD_PRICING,
  note="queued time is free; 2,500 free minutes a month apply to "
  "e2-standard-2 only",
)
REGISTRY_STORAGE = Price(
  "Artifact Registry, Docker image storage",
  0.10,
  "per GB-month",
  ARTIFACT_REGISTRY_PRICING,
  note="the first 0.5 GB per billing account free; pulls in the same "
  "region free",
)
PRICES = (CLOUD_BUILD_MINUTE, REGISTRY_STORAGE)


def markdown_table() -> str:
  """The docs' platform-facts table (docs/where-it-runs.md holds it)."""
  lines = [
    "| platform | what | fact | source | checked |",
    "| --- | --- | --- | --- | --- |",
  ]
  for platform, what, value, source, checked in rows():
    links = " ".join(
      f"<{s.strip()}>" if s.strip().startswith("http") else s.strip()
      for s in source.split(" ; ")
    )
    lines.append(f"| {platform} | `{what}` | {value} | {links} | {checked} |")
  return "\n".join(lines)


DOCS_PAGE = "docs/where-it-runs.md"
BEGIN, END = "<!-- platforms:begin -->", "<!-- platforms:end -->"


def with_table(page: str) -> str:
  """`page` (the docs page's text) with the generated table between its
  markers."""
  head, found, rest = page.partition(BEGIN)
  _, found_end, tail = rest.partition(END)
  if not (found and found_end):
    raise ValueError(f"{DOCS_PAGE} has no {BEGIN} ... {END} section")
  return f"{head}{BEGIN}\n{markdown_table()}\n{END}{tail}"


def main(argv: list[str]) -> int:
  """python -m launch.platforms [--write]: prints the table, or writes it
  into the docs page."""
  if argv[1:] == ["--write"]:
    import os

    path = os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), DOCS_PAGE
    )
    with open(path, encoding="utf-8") as f:
      page = f.read()
    with open(path, "w", encoding="utf-8") as f:
      f.write(with_table(page))
    print(f"Wrote {DOCS_PAGE}")
    return 0
  if argv[1:]:
    print(f"Usage: python -m launch.platforms [--write]; got {argv[1:]}")
    return 2
  print(markdown_table())
  return 0


if __name__ == "__main__":
  import sys

  sys.exit(main(sys.argv))
