"""Submit training to Vertex AI: python -m launch.vertex [FLAGS] -- [TRAINER FLAGS]

    python -m launch.vertex --project=P --region=us-central1 \
        --staging_bucket=gs://b/staging --machine_type=n1-standard-16 \
        --accelerator_type=NVIDIA_TESLA_V100 --accelerator_count=4 \
        --base_output_dir=gs://b/runs/1 --dry_run -- --strategy=mirrored \
        --train_data='gs://b/data/train-*'

Three ways to ship the code:

  built for you         (default) this package's image, from the Dockerfile
                        (GPU/CPU) or Dockerfile.tpu (TPU), tagged by a hash of
                        its content in Artifact Registry (--repository):
                        reused when the tag exists, else built by Cloud Build
                        after a preflight (launch/cloud_build.py)
  container path        --container_image=URI: an image you built
  package path          --executor_image_uri=URI: builds this package's
                        sdist, uploads it to --staging_bucket and installs it
                        on that prebuilt TensorFlow image (pythonPackageSpec)

Every way the worker pools run `python -m trainer.task` with the trainer
flags after `--`. Shapes:

  one machine, N GPUs   --machine_type --accelerator_type --accelerator_count
  several machines      --workers=N: pool 0 is the chief (one replica), pool 1
                        N workers of the same shape; the trainer runs
                        multi_worker (Vertex sets CLUSTER_SPEC / TF_CONFIG)
  TPU VM                --machine_type=cloud-tpu --accelerator_type=TPU_V3
                        --accelerator_count=8, or ct5lp-hightpu-4t with
                        TPU_V5_LITEPOD
  input on CPU machines --data_service_workers=N: pool 2 is N CPU machines
                        (--data_service_machine_type) running a tf.data
                        service that decodes and augments for the trainers
                        (they get --data_service=vertex)

Hyperparameter tuning: --tune creates a HyperparameterTuningJob whose trials
each run the job above, with the same worker pools, told to report --metric
(see launch/tuning.py for --param):

    python -m launch.vertex ... --tune --metric=val_accuracy --goal=maximize \
        --param=learning_rate:double:1e-4:1e-2:log \
        --param=global_batch_size:discrete:64,128,256 \
        --max_trials=20 --parallel_trials=4 --dry_run -- --eval_data=...

--base_output_dir makes Vertex set AIP_MODEL_DIR, AIP_CHECKPOINT_DIR and
AIP_TENSORBOARD_LOG_DIR, which the trainer uses when its own flags are not
given. Trainers on GPU or TPU machines get --require_accelerator=gpu|tpu, so
a TensorFlow that cannot see the accelerator stops the job at once instead
of training on the CPU. --dry_run prints the job request as JSON (and the
image build it would start) and submits nothing. Flag values, the trainer's included (parsed into its Config here),
are checked before anything is built or uploaded. Submitting never imports
TensorFlow; google-cloud-aiplatform is imported only to submit.

This module is the command (its flags and main); the checks are in
launch/vertex_checks.py, the request bodies in launch/vertex_requests.py and
the calls to Vertex AI in launch/vertex_submit.py.
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any

from absl import app
from absl import flags

from launch import cloud_build
from launch import flag_defaults
from launch import image_build
from launch import tuning
from launch import vertex_requests
from launch import vertex_submit

# Also launch.vertex's public names: tests and user code check options with
# vertex.validate and catch vertex.LaunchError.
from launch.vertex_checks import LaunchError
from launch.vertex_checks import validate

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
  """Defines the launcher's flags on `flag_values`.

  Called when this module runs as the command; `default_options` calls it
  on a private FlagValues, so importing the module (tests, other launchers)
  defines no global flag that could clash with another command's.
  """
  flags.DEFINE_string(
    "project", None, "Google Cloud project id.", flag_values=flag_values
  )
  flags.DEFINE_string(
    "region", "us-central1", "Vertex AI region.", flag_values=flag_values
  )
  flags.DEFINE_string(
    "staging_bucket",
    None,
    "gs:// path for the package and "
    "Vertex's staging files (container path: default "
    "--base_output_dir).",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "display_name",
    "",
    "Job name; default alexnet-<time>.",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "machine_type",
    "n1-standard-8",
    "Machine of every replica.",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "accelerator_type",
    "",
    "e.g. NVIDIA_TESLA_T4, "
    "NVIDIA_TESLA_V100, NVIDIA_L4, NVIDIA_TESLA_A100, "
    "NVIDIA_A100_80GB, NVIDIA_H100_80GB, TPU_V2, TPU_V3, "
    "TPU_V5_LITEPOD; empty = CPU only.",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "accelerator_count", 0, "Accelerators per replica.", flag_values=flag_values
  )
  flags.DEFINE_integer(
    "workers",
    0,
    "Extra machines beside the chief (0 = one machine).",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "data_service_workers",
    0,
    "CPU machines (worker pool "
    "2) that decode and augment for the trainers through a "
    "tf.data service; 0 = the trainers' own CPUs do it.",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "data_service_machine_type",
    "n1-highcpu-16",
    "Machine of each --data_service_workers replica.",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "tpu_topology",
    "",
    "TPU v5e topology, e.g. 2x2 (default from the machine type).",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "boot_disk_gb", 100, "Boot disk per replica.", flag_values=flag_values
  )
  flags.DEFINE_string(
    "base_output_dir",
    None,
    "gs:// dir for the model, "
    "checkpoints and TensorBoard logs (sets AIP_*_DIR).",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "executor_image_uri",
    "",
    "Package path: a prebuilt "
    "training image with TensorFlow 2.17-2.21 to install "
    "the package on. Vertex AI's own (tf-cpu/tf-gpu.2-17 "
    "and older) are past their end of availability and "
    "refused (launch/platforms.py).",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "container_image",
    "",
    "Container path: an image built "
    "from this repo's Dockerfile (or Dockerfile.tpu), e.g. "
    "us-central1-docker.pkg.dev/P/REPO/alexnet-tf:2.21.0. Its "
    "entrypoint runs the trainer; no package is uploaded. "
    "Required for TPU machines.",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "repository",
    "alexnet",
    "Artifact Registry Docker repository (in --region) for the image "
    "built from this package when no --container_image or "
    "--executor_image_uri is given.",
    flag_values=flag_values,
  )
  flags.DEFINE_bool(
    "create_repository",
    False,
    "Create --repository if it does not exist (never done unasked).",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "build_service_account",
    "",
    "Account the Cloud Build runs as; empty = the project's default "
    "(the Compute Engine default account, or the legacy Cloud Build one).",
    flag_values=flag_values,
  )
  flags.DEFINE_bool(
    "skip_permission_check",
    False,
    "Skip the check that the build may push and Vertex AI may pull (roles "
    "granted on a folder or organisation are not seen by it).",
    flag_values=flag_values,
  )
  flags.DEFINE_bool(
    "no_wait",
    False,
    "Return once the image build is started: its last step submits the "
    "job when the image is pushed.",
    flag_values=flag_values,
  )
  flags.DEFINE_bool(
    "spot",
    False,
    "Run on Spot VMs (cheaper, preemptible; the "
    "trainer checkpoints on SIGTERM and resumes).",
    flag_values=flag_values,
  )
  flags.DEFINE_bool(
    "restart_job_on_worker_restart",
    False,
    "Restart the whole job when a worker restarts.",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "timeout_hours",
    0,
    "Cancel the job after this long (0 = Vertex's default, 7 days).",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "service_account",
    "",
    "Service account the job runs as.",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "network",
    "",
    "VPC network (projects/N/global/networks/X).",
    flag_values=flag_values,
  )
  flags.DEFINE_list("labels", [], "key=value labels.", flag_values=flag_values)
  flags.DEFINE_string(
    "tensorboard",
    "",
    "Vertex TensorBoard instance "
    "(projects/P/locations/L/tensorboards/ID) to stream logs to.",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "api_endpoint",
    "",
    "Vertex API endpoint override (private "
    "endpoints; http:// endpoints use no credentials).",
    flag_values=flag_values,
  )
  flags.DEFINE_bool(
    "dry_run",
    False,
    "Print the job request as JSON (and the image build it would start); submit nothing.",
    flag_values=flag_values,
  )
  flags.DEFINE_bool(
    "wait",
    False,
    "Stream the job's state until it ends; exit non-zero unless it succeeds.",
    flag_values=flag_values,
  )
  flags.DEFINE_float(
    "poll_secs",
    30,
    "How often --wait and an image build are polled (s).",
    flag_values=flag_values,
  )
  flags.DEFINE_bool(
    "tune",
    False,
    "Create a hyperparameter tuning job: trials "
    "of this job, each with other values of the --param flags, "
    "compared by --metric.",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "metric",
    "",
    "--tune: what trials are compared by, as "
    "the trainer logs it each epoch: loss, accuracy, auc, "
    "val_loss, val_accuracy or val_auc.",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "goal",
    "",
    "--tune: maximize or minimize --metric; "
    "default minimize for losses, else maximize.",
    flag_values=flag_values,
  )
  flags.DEFINE_multi_string(
    "param",
    [],
    "--tune: a trainer flag to tune, as "
    "NAME:double:MIN:MAX[:SCALE], "
    "NAME:integer:MIN:MAX[:SCALE], "
    "NAME:discrete:V1,V2,...[:SCALE] or "
    "NAME:categorical:V1,V2,...; SCALE linear (default), "
    "log or reverse_log. Repeat for each flag.",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "max_trials", 10, "--tune: trials in all.", flag_values=flag_values
  )
  flags.DEFINE_integer(
    "parallel_trials",
    1,
    "--tune: trials at once (fewer "
    "give the search more results to learn from).",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "max_failed_trials",
    0,
    "--tune: failed trials that fail the job; 0 = Vertex decides.",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "search_algorithm",
    "bayesian",
    "--tune: bayesian "
    "(Vertex's default), grid (integer, discrete and "
    "categorical parameters only) or random.",
    flag_values=flag_values,
  )


def default_options(**changes: Any) -> dict[str, Any]:
  """The options `main` reads from the flags, at their defaults plus
  `changes`: for building and checking requests as functions."""
  return flag_defaults.options(
    define_flags, options_from_flags, "launch.vertex", changes
  )


TUNING_FLAGS = (
  "metric",
  "goal",
  "param",
  "max_trials",
  "parallel_trials",
  "max_failed_trials",
  "search_algorithm",
)


def options_from_flags(flag_values: flags.FlagValues = FLAGS) -> dict[str, Any]:
  """The options every function here takes, from parsed flags."""
  options = {
    name: flag_values[name].value
    for name in (
      "project",
      "region",
      "staging_bucket",
      "machine_type",
      "accelerator_type",
      "accelerator_count",
      "workers",
      "data_service_workers",
      "data_service_machine_type",
      "tpu_topology",
      "boot_disk_gb",
      "base_output_dir",
      "executor_image_uri",
      "container_image",
      "repository",
      "create_repository",
      "build_service_account",
      "skip_permission_check",
      "no_wait",
      "spot",
      "restart_job_on_worker_restart",
      "timeout_hours",
      "service_account",
      "network",
      "labels",
      "tensorboard",
      "api_endpoint",
      "tune",
      *TUNING_FLAGS,
    )
  }
  options["tuning_flags_given"] = [
    n for n in TUNING_FLAGS if flag_values[n].present
  ]
  return options


def main(argv):
  trainer_args = argv[1:]
  options = options_from_flags()
  try:
    if FLAGS.no_wait and FLAGS.wait:
      raise LaunchError(
        "--no_wait and --wait exclude each other: --no_wait returns before "
        "the job exists"
      )
    trainer = validate(options, trainer_args)
    parameters = tuning.validate(options, trainer_args, trainer)
  except (LaunchError, tuning.TuningError) as e:
    print(f"Error: {e}", file=sys.stderr)
    return 2
  display_name = FLAGS.display_name or (
    f"alexnet-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}"
  )
  build = None
  if not options["container_image"] and not options["executor_image_uri"]:
    # This package's own image, tagged by its content.
    try:
      build = image_build.plan(options)
    except (FileNotFoundError, ValueError) as e:
      print(f"Error: {e}", file=sys.stderr)
      return 2
    options = {**options, "container_image": build.image}
  request = vertex_requests.build_request(
    options, parameters, trainer_args, display_name, trainer
  )
  if FLAGS.dry_run:
    if build:
      line, build_request = cloud_build.describe_plan(options, build, request)
      print(line)
      if build_request:
        print("Cloud Build request:")
        print(json.dumps(build_request, indent=2))
      print("Vertex AI request:")
    print(json.dumps(request, indent=2))
    return 0
  if build:
    try:
      if cloud_build.ensure_image(options, build, request, FLAGS.poll_secs):
        return 0  # The build submits the job.
    except LaunchError as e:
      print(f"Error: {e}", file=sys.stderr)
      return 1
  job = vertex_submit.submit_job(options, request, parameters, display_name)
  if FLAGS.wait:
    return 0 if vertex_submit.wait(job, FLAGS.poll_secs) else 1
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main)
