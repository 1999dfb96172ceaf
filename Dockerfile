# The trainer on a GPU image that carries the CUDA and cuDNN its TensorFlow
# was built for: Vertex AI's container path (launch.vertex
# --container_image=URI), Kubernetes, any Docker host with NVIDIA's runtime.
# Build and push from the repository root:
#
#   gcloud builds submit --tag=us-central1-docker.pkg.dev/PROJECT/REPO/alexnet-tf:2.21.0 .
#
# Every version here is a row of launch/platforms.py (GPU_IMAGE, with its
# source and the date it was checked); tests/dockerfile_test.py holds this
# file to it. The CUDA runtime and cuDNN come from tensorflow[and-cuda]'s
# wheels, pinned at the versions TensorFlow 2.21 was built and tested with
# (CUDA 12.5, cuDNN 9.3): the official tensorflow/tensorflow:2.21.0-gpu image
# carries a system cuDNN 8.9 that TensorFlow 2.21 cannot use. The base brings
# NVIDIA's container settings and the driver's forward compatibility for CUDA
# 12.5. The package goes in without dependencies and launch.install_deps adds
# the others with the TensorFlow family pinned. The image also runs on
# CPU-only machines (launch.vertex's tf.data service pool).
FROM nvidia/cuda:12.5.1-base-ubuntu22.04

ENV PIP_NO_CACHE_DIR=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s /usr/bin/python3 /usr/local/bin/python
RUN python -m pip install 'tensorflow[and-cuda]==2.21.0' \
      nvidia-cublas-cu12==12.5.3.2 \
      nvidia-cuda-cupti-cu12==12.5.82 \
      nvidia-cuda-nvcc-cu12==12.5.82 \
      nvidia-cuda-nvrtc-cu12==12.5.82 \
      nvidia-cuda-runtime-cu12==12.5.82 \
      nvidia-cudnn-cu12==9.3.0.75 \
      nvidia-cufft-cu12==11.2.3.61 \
      nvidia-curand-cu12==10.3.6.82 \
      nvidia-cusolver-cu12==11.6.3.83 \
      nvidia-cusparse-cu12==12.5.1.3 \
      nvidia-nccl-cu12==2.27.7 \
      nvidia-nvjitlink-cu12==12.5.82

WORKDIR /app
COPY setup.py README.md ./
COPY trainer/ trainer/
COPY launch/ launch/
COPY configs/ configs/
RUN python -m pip install --no-deps . \
 && python -m launch.install_deps

ENTRYPOINT ["python", "-m", "trainer.task"]
