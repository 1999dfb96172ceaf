# The trainer on the official TensorFlow GPU image: Vertex AI's container path
# (launch.vertex --container_image=URI), for TensorFlow newer than Vertex's
# prebuilt training images. Build and push from the repository root:
#
#   gcloud builds submit --tag=us-central1-docker.pkg.dev/PROJECT/REPO/alexnet-tf:2.21
#
# The base image's TensorFlow, CUDA and cuDNN stay as they are: the package is
# installed without dependencies and launch.install_deps adds the others with
# the TensorFlow family pinned. The image also runs on CPU-only machines
# (launch.vertex's tf.data service pool uses it with another command).
FROM tensorflow/tensorflow:2.21.0-gpu

ENV PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY setup.py README.md ./
COPY trainer/ trainer/
COPY launch/ launch/
COPY configs/ configs/
RUN python -m pip install --no-deps . \
 && python -m launch.install_deps

ENTRYPOINT ["python", "-m", "trainer.task"]
