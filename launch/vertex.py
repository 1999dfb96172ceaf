"""Submit training to Vertex AI: python -m launch.vertex [FLAGS] -- [TRAINER FLAGS]

    python -m launch.vertex --project=P --region=us-central1 \
        --staging_bucket=gs://b/staging --machine_type=n1-standard-16 \
        --accelerator_type=NVIDIA_TESLA_V100 --accelerator_count=4 \
        --base_output_dir=gs://b/runs/1 --dry_run -- --strategy=mirrored \
        --train_data='gs://b/data/train-*'

Two ways to ship the code:

  package path          (default) builds this package's sdist, uploads it to
                        --staging_bucket and runs it on Vertex's prebuilt
                        TensorFlow training image (pythonPackageSpec)
  container path        --container_image=URI: runs an image built from the
                        Dockerfile (GPU/CPU) or Dockerfile.tpu (containerSpec);
                        nothing is uploaded. TPU jobs need it: Vertex has no
                        prebuilt TensorFlow TPU image in this package's range.

Either way the worker pools run `python -m trainer.task` with the trainer
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
of training on the CPU. --dry_run prints the job request as JSON and submits
nothing. Flag values, the trainer's included (parsed into its Config here),
are checked before anything is built or uploaded. Submitting never imports
TensorFlow; google-cloud-aiplatform is imported only to submit.
"""

from __future__ import annotations

from collections.abc import Sequence
import datetime
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import app
from absl import flags

from launch import platforms
from launch import trainer_flags
from launch import tuning
from trainer.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_NAME = "alexnet-tf"

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
    "Print the job request as JSON; submit nothing.",
    flag_values=flag_values,
  )
  flags.DEFINE_bool(
    "wait",
    False,
    "Stream the job's state until it ends; exit non-zero unless it succeeds.",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "poll_secs", 30, "--wait polling interval.", flag_values=flag_values
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
  flag_values = flags.FlagValues()
  define_flags(flag_values)
  flag_values.mark_as_parsed()
  options = options_from_flags(flag_values)
  unknown = set(changes) - set(options)
  if unknown:
    raise ValueError(f"not launch.vertex options: {sorted(unknown)}")
  options.update(changes)
  return options


TUNING_FLAGS = (
  "metric",
  "goal",
  "param",
  "max_trials",
  "parallel_trials",
  "max_failed_trials",
  "search_algorithm",
)

# Accelerator -> machine-type families it can be attached to.
GPU_MACHINES = {
  "NVIDIA_TESLA_K80": "n1-",
  "NVIDIA_TESLA_P4": "n1-",
  "NVIDIA_TESLA_P100": "n1-",
  "NVIDIA_TESLA_V100": "n1-",
  "NVIDIA_TESLA_T4": "n1-",
  "NVIDIA_L4": "g2-",
  "NVIDIA_TESLA_A100": "a2-highgpu-",
  "NVIDIA_A100_80GB": "a2-ultragpu-",
  "NVIDIA_H100_80GB": "a3-highgpu-",
}
TPU_MACHINES = {
  "TPU_V2": "cloud-tpu",
  "TPU_V3": "cloud-tpu",
  "TPU_V5_LITEPOD": "ct5lp-hightpu-",
}
TPU_MACHINE_PREFIXES = ("cloud-tpu", "ct5lp")
V5E_TOPOLOGY = {"1t": "1x1", "4t": "2x2", "8t": "2x4"}
# Where Vertex mounts Cloud Storage buckets (Cloud Storage FUSE).
CLOUD_STORAGE_PATH = re.compile(r"(gs://|/gcs/)[^/]+")
OUTPUT_DIR_HELP = {
  "base_output_dir": "a gs:// path for the job's outputs",
  "staging_bucket": "a gs:// path for the package and Vertex's staging files",
}
TERMINAL_STATES = {
  "JOB_STATE_SUCCEEDED",
  "JOB_STATE_FAILED",
  "JOB_STATE_CANCELLED",
  "JOB_STATE_EXPIRED",
}


class LaunchError(Exception):
  """A flag value Vertex would reject; one line."""


def accelerator_kind(accelerator_type: str) -> str:
  """'gpu', 'tpu' or 'none': the trainer's --require_accelerator value."""
  if accelerator_type in GPU_MACHINES:
    return "gpu"
  if accelerator_type in TPU_MACHINES:
    return "tpu"
  return "none"


def validate(
  options: dict[str, Any],
  trainer_args: Sequence[str],
  today: datetime.date | None = None,
) -> trainer_flags.TrainerFlags:
  """Checks every value before anything is built, uploaded or submitted.

  Args:
    options: the launcher's flag values (`options_from_flags()`).
    trainer_args: the flags after `--`.
    today: the date images' end of availability is compared with.

  Returns:
    The trainer flags as the trainer will parse them (`TrainerFlags`).

  Raises:
    LaunchError: one line naming the flag and the value that is wrong.
  """
  if not options["project"]:
    raise LaunchError("--project is required")
  container = options["container_image"]
  for name, help_text in OUTPUT_DIR_HELP.items():
    value = options[name]
    if not value and name == "staging_bucket" and container:
      continue  # Nothing to stage; the client falls back to the output dir.
    if not value:
      raise LaunchError(f"--{name} is required: {help_text}")
    if not value.startswith("gs://"):
      raise LaunchError(f"--{name} must be {help_text}, got {value!r}")
  if container and options["executor_image_uri"]:
    raise LaunchError(
      "--container_image and --executor_image_uri exclude "
      "each other: an image built from the Dockerfile, or a "
      "prebuilt image the package is installed on"
    )
  try:
    trainer = trainer_flags.parse(trainer_args)
  except UserError as e:
    raise LaunchError(str(e)) from None
  config = trainer.config
  accelerator, count = options["accelerator_type"], options["accelerator_count"]
  machine = options["machine_type"]
  for name in ("workers", "data_service_workers"):
    if options[name] < 0:
      raise LaunchError(f"--{name} must be >= 0, got {options[name]}")
  if options["data_service_workers"]:
    if config.data_service:
      raise LaunchError(
        "--data_service_workers starts the job's own tf.data "
        "service; drop the trainer flag --data_service"
      )
    if options["data_service_machine_type"].startswith(TPU_MACHINE_PREFIXES):
      raise LaunchError(
        "--data_service_machine_type must be a CPU machine, "
        f"got {options['data_service_machine_type']}"
      )
  if (
    accelerator
    and accelerator not in GPU_MACHINES
    and accelerator not in TPU_MACHINES
  ):
    raise LaunchError(
      f"--accelerator_type={accelerator} is not one of "
      f"{', '.join(list(GPU_MACHINES) + list(TPU_MACHINES))}"
    )
  if accelerator and count < 1:
    raise LaunchError(
      f"--accelerator_type={accelerator} needs --accelerator_count >= 1"
    )
  if not accelerator and count:
    raise LaunchError("--accelerator_count without --accelerator_type")
  if accelerator in GPU_MACHINES:
    family = GPU_MACHINES[accelerator]
    if not machine.startswith(family):
      raise LaunchError(
        f"--accelerator_type={accelerator} runs on {family}* "
        f"machines, not --machine_type={machine}"
      )
    fixed = re.search(r"-(\d+)g$", machine)
    if fixed and int(fixed.group(1)) != count:
      raise LaunchError(
        f"--machine_type={machine} has {fixed.group(1)} GPUs; "
        f"got --accelerator_count={count}"
      )
    if family == "n1-" and count not in (1, 2, 4, 8):
      raise LaunchError(
        f"--accelerator_count={count}: n1 machines take 1, 2, 4 or 8 GPUs"
      )
  if accelerator in TPU_MACHINES:
    if not machine.startswith(TPU_MACHINES[accelerator]):
      raise LaunchError(
        f"--accelerator_type={accelerator} needs "
        f"--machine_type={TPU_MACHINES[accelerator]}*, got "
        f"{machine}"
      )
    if machine == "cloud-tpu" and count != 8:
      raise LaunchError(
        f"--machine_type=cloud-tpu takes 8 TPU cores "
        f"(v2-8/v3-8), got --accelerator_count={count}"
      )
    chips = re.search(r"-(\d+)t$", machine)
    if chips and int(chips.group(1)) != count:
      raise LaunchError(
        f"--machine_type={machine} has {chips.group(1)} TPU "
        f"chips; got --accelerator_count={count}"
      )
    for name in ("workers", "data_service_workers"):
      if options[name]:
        raise LaunchError(
          f"--{name} is not supported with TPU machines; use a larger TPU slice"
        )
    if not container:
      raise LaunchError(
        f"--accelerator_type={accelerator} needs --container_image: Vertex "
        "AI has no prebuilt TensorFlow TPU training image in this package's "
        "TensorFlow range, and pip would replace tensorflow-tpu; build one "
        "from Dockerfile.tpu (docs: Docker)"
      )
  elif machine.startswith(TPU_MACHINE_PREFIXES):
    raise LaunchError(
      f"--machine_type={machine} needs a TPU --accelerator_type"
    )
  strategy = config.strategy
  if options["workers"] and strategy not in ("auto", "multi_worker"):
    raise LaunchError(
      f"--workers={options['workers']} runs multi_worker; "
      f"trainer flag --strategy={strategy} contradicts it"
    )
  if accelerator in TPU_MACHINES and strategy not in ("auto", "tpu"):
    raise LaunchError(f"a TPU job needs --strategy=tpu or auto, got {strategy}")
  if strategy == "tpu" and accelerator not in TPU_MACHINES:
    raise LaunchError(
      "trainer flag --strategy=tpu: the job has no TPU "
      f"(--accelerator_type={accelerator or 'none'}); ask for "
      "a TPU machine or use --strategy=auto"
    )
  if config.data_service == "vertex" and not options["data_service_workers"]:
    raise LaunchError(
      "trainer flag --data_service=vertex needs "
      "--data_service_workers >= 1 (the job's input pool)"
    )
  required = config.require_accelerator
  kind = accelerator_kind(accelerator)
  if required != "none" and required != kind:
    raise LaunchError(
      f"trainer flag --require_accelerator={required}: the "
      f"job has no {required.upper()} (--accelerator_type="
      f"{accelerator or 'none'})"
    )
  for name in ("train_data", "eval_data", "model_dir"):
    value = getattr(config, name)
    if value and not CLOUD_STORAGE_PATH.match(value):
      raise LaunchError(
        f"trainer flag --{name}={value} is a local path; "
        "Vertex AI machines read Cloud Storage as "
        "gs://BUCKET/... or /gcs/BUCKET/... (Cloud Storage "
        "FUSE)"
      )
  for label in options["labels"]:
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}=[a-z0-9_-]{0,63}", label):
      raise LaunchError(
        f"--labels: {label!r} is not key=value in lowercase "
        "letters, digits, - and _"
      )
  check_images(options, today)
  return trainer


def build_commands(options):
  """The commands that build this package's image and submit with it, for
  the pools `options` ask for (Dockerfile, or Dockerfile.tpu on TPUs)."""
  tpu = options["accelerator_type"] in TPU_MACHINES
  region = options["region"]
  image = (
    f"{region}-docker.pkg.dev/{options['project'] or 'PROJECT'}/REPO/"
    f"alexnet-tf{'-tpu' if tpu else ''}:"
    f"{platforms.TPU_STACK.tensorflow_tpu if tpu else platforms.GPU_IMAGE.tensorflow}"
  )
  build = (
    f"docker build -f Dockerfile.tpu -t {image} . && docker push {image}"
    if tpu
    else f"gcloud builds submit --tag={image} ."
  )
  return build, f"python -m launch.vertex --container_image={image} ..."


def check_images(options, today=None):
  """Refuses a job whose image cannot start: none given (every prebuilt
  TensorFlow training image is past its end of availability), or a
  prebuilt one past its date (launch.platforms).

  Raises:
    LaunchError: one line with the date, its source and the commands to use
      this package's own image instead.
  """
  today = today or datetime.date.today()
  build, submit = build_commands(options)
  instead = f"build this package's image and use it: {build}, then {submit}"
  uri = options["executor_image_uri"]
  if options["container_image"]:
    return
  if not uri:
    newest = max(
      (i for i in platforms.VERTEX_TRAINING_IMAGES if i.accelerator == "gpu"),
      key=lambda i: tuple(map(int, i.tensorflow.split("."))),
    )
    if newest.expired(today):
      raise LaunchError(
        "Vertex AI's prebuilt TensorFlow training images are past their end "
        f"of availability (the newest, {_image_name(newest.uri)}, on "
        f"{newest.end_of_availability}: {newest.source}); {instead}"
      )
    raise LaunchError(
      f"--container_image or --executor_image_uri is required; {instead}"
    )
  image = platforms.vertex_image(uri)
  if image and image.expired(today):
    raise LaunchError(
      f"--executor_image_uri={uri}: end of availability "
      f"{image.end_of_availability} ({image.source}); {instead}"
    )
  if (
    image
    and image.tensorflow
    and not platforms.in_supported_range(image.tensorflow)
  ):
    raise LaunchError(
      f"--executor_image_uri={uri} brings TensorFlow {image.tensorflow}, "
      f"outside this package's {'-'.join(platforms.SUPPORTED_TENSORFLOW)}; "
      f"{instead}"
    )


def _image_name(uri):
  """us-docker.pkg.dev/vertex-ai/training/tf-gpu.2-17.py310:latest ->
  tf-gpu.2-17.py310"""
  return uri.rsplit("/", 1)[-1].split(":", 1)[0]


def executor_image(options):
  """The prebuilt image the package is installed on."""
  return options["executor_image_uri"]


def package_uri(options, display_name):
  return (
    f"{options['staging_bucket'].rstrip('/')}/{PACKAGE_NAME}/{display_name}/"
    f"{PACKAGE_NAME}-{_version()}.tar.gz"
  )


def _version():
  text = open(os.path.join(REPO, "setup.py"), encoding="utf-8").read()
  return re.search(r'version="([^"]+)"', text).group(1)


def trainer_args_for(options, trainer_args, trainer):
  """The trainer's flags, plus what the job's shape implies.

  Args:
    options: the launcher's flag values.
    trainer_args: the flags after `--`, passed on as given.
    trainer: the same flags parsed (`TrainerFlags`).

  Returns:
    The argument list of `python -m trainer.task`: the strategy the shape
    implies when the config leaves it on auto, the job's tf.data service, and
    --require_accelerator for GPU and TPU machines unless it was given.
  """
  args = list(trainer_args)
  config = trainer.config
  tpu = options["accelerator_type"] in TPU_MACHINES
  if config.strategy == "auto":
    if tpu:
      args.append("--strategy=tpu")
    elif options["workers"]:
      args.append("--strategy=multi_worker")
  if tpu and not config.tpu:
    args.append("--tpu=local")
  if options["data_service_workers"]:
    args.append("--data_service=vertex")
  kind = accelerator_kind(options["accelerator_type"])
  if kind != "none" and "require_accelerator" not in trainer.given:
    args.append(f"--require_accelerator={kind}")
  return args


def program_spec(options, display_name, module, args):
  """The pool's code: {"pythonPackageSpec": ...} or {"containerSpec": ...}.

  The container's entrypoint is the trainer; other modules override it.
  """
  image = options["container_image"]
  if image:
    spec = {"imageUri": image}
    if module != "trainer.task":
      spec["command"] = ["python", "-m", module]
    spec["args"] = args
    return {"containerSpec": spec}
  return {
    "pythonPackageSpec": {
      "executorImageUri": executor_image(options),
      "packageUris": [package_uri(options, display_name)],
      "pythonModule": module,
      "args": args,
    }
  }


def job_request(
  options: dict[str, Any],
  trainer_args: Sequence[str],
  display_name: str,
  trainer: trainer_flags.TrainerFlags,
) -> dict[str, Any]:
  """The CustomJob as Vertex AI's REST API receives it (camelCase JSON)."""
  machine_spec = {"machineType": options["machine_type"]}
  if options["accelerator_type"]:
    machine_spec["acceleratorType"] = options["accelerator_type"]
    machine_spec["acceleratorCount"] = options["accelerator_count"]
  if options["machine_type"].startswith("ct5lp-hightpu-"):
    machine_spec["tpuTopology"] = options["tpu_topology"] or V5E_TOPOLOGY.get(
      options["machine_type"].rsplit("-", 1)[1], "2x2"
    )
  pool = {
    "machineSpec": machine_spec,
    "replicaCount": "1",
    "diskSpec": {
      "bootDiskType": "pd-ssd",
      "bootDiskSizeGb": options["boot_disk_gb"],
    },
    **program_spec(
      options,
      display_name,
      "trainer.task",
      trainer_args_for(options, trainer_args, trainer),
    ),
  }
  pools = [pool]
  if options["workers"]:
    pools.append({**pool, "replicaCount": str(options["workers"])})
  if options["data_service_workers"]:
    if not options["workers"]:
      pools.append({})  # Vertex's way to leave pool 1 (workers) empty.
    pools.append(
      {
        "machineSpec": {"machineType": options["data_service_machine_type"]},
        "replicaCount": str(options["data_service_workers"]),
        "diskSpec": pool["diskSpec"],
        **program_spec(
          options, display_name, "trainer.data_service", ["--role=vertex"]
        ),
      }
    )
  job_spec = {
    "workerPoolSpecs": pools,
    "baseOutputDirectory": {"outputUriPrefix": options["base_output_dir"]},
  }
  if options["service_account"]:
    job_spec["serviceAccount"] = options["service_account"]
  if options["network"]:
    job_spec["network"] = options["network"]
  if options["tensorboard"]:
    job_spec["tensorboard"] = options["tensorboard"]
  scheduling: dict[str, Any] = {}
  if options["timeout_hours"]:
    scheduling["timeout"] = f"{options['timeout_hours'] * 3600}s"
  if options["restart_job_on_worker_restart"]:
    scheduling["restartJobOnWorkerRestart"] = True
  if options["spot"]:
    scheduling["strategy"] = "SPOT"
  if scheduling:
    job_spec["scheduling"] = scheduling
  request = {"displayName": display_name, "jobSpec": job_spec}
  if options["labels"]:
    request["labels"] = dict(label.split("=", 1) for label in options["labels"])
  return request


def build_sdist(out_dir):
  """Builds this package's sdist with setuptools; returns its path."""
  subprocess.run(
    [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", out_dir],
    cwd=REPO,
    check=True,
    capture_output=True,
  )
  (path,) = glob.glob(os.path.join(out_dir, "*.tar.gz"))
  return path


def upload(local_path, gs_uri, project):
  from google.cloud import storage

  bucket, _, name = gs_uri[len("gs://") :].partition("/")
  credentials = None
  if os.environ.get("STORAGE_EMULATOR_HOST"):
    # A local emulator takes no credentials.
    from google.auth.credentials import AnonymousCredentials

    credentials = AnonymousCredentials()
  client = storage.Client(project=project, credentials=credentials)
  client.bucket(bucket).blob(name).upload_from_filename(local_path)


def _snake(name):
  return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _init_client(options):
  """aiplatform.init for this job; returns the staging bucket it uses."""
  from google.cloud import aiplatform

  # The client wants a staging bucket even when nothing is staged.
  staging_bucket = options["staging_bucket"] or options["base_output_dir"]
  init = {
    "project": options["project"],
    "location": options["region"],
    "staging_bucket": staging_bucket,
  }
  if options["api_endpoint"]:
    init["api_endpoint"] = options["api_endpoint"]
    init["api_transport"] = "rest"
    if options["api_endpoint"].startswith("http://"):
      from google.auth.credentials import AnonymousCredentials

      init["credentials"] = AnonymousCredentials()
  aiplatform.init(**init)
  return staging_bucket


def _custom_job(options, request, job_spec, staging_bucket):
  """aiplatform.CustomJob with the worker pools of `job_spec` (REST JSON)."""
  from google.cloud import aiplatform
  from google.cloud.aiplatform_v1.types import custom_job as custom_job_types

  spec = custom_job_types.CustomJobSpec.from_json(json.dumps(job_spec))
  return aiplatform.CustomJob(
    display_name=request["displayName"],
    worker_pool_specs=list(spec.worker_pool_specs),
    base_output_dir=options["base_output_dir"],
    labels=request.get("labels"),
    staging_bucket=staging_bucket,
  )


def _run_settings(options):
  """The job's run settings, as CustomJob.submit and
  HyperparameterTuningJob.run take them."""
  from google.cloud.aiplatform_v1.types import custom_job as custom_job_types

  return {
    "service_account": options["service_account"] or None,
    "network": options["network"] or None,
    "timeout": options["timeout_hours"] * 3600 or None,
    "restart_job_on_worker_restart": options["restart_job_on_worker_restart"],
    "tensorboard": options["tensorboard"] or None,
    "scheduling_strategy": (
      custom_job_types.Scheduling.Strategy.SPOT if options["spot"] else None
    ),
  }


def submit(options, request):
  """Creates the CustomJob with the real client; returns the job."""
  staging_bucket = _init_client(options)
  job = _custom_job(options, request, request["jobSpec"], staging_bucket)
  job.submit(**_run_settings(options))
  return job


def submit_tuning(options, request, parameters):
  """Creates the HyperparameterTuningJob with the real client; returns it."""
  from google.cloud import aiplatform
  from google.cloud.aiplatform_v1.types import custom_job as custom_job_types
  from google.protobuf import duration_pb2

  staging_bucket = _init_client(options)
  trial = _custom_job(options, request, request["trialJobSpec"], staging_bucket)
  # HyperparameterTuningJob.run() puts the run settings on the trials' job
  # spec and creates the job, then blocks until the job ends (with
  # sync=False, in a thread the interpreter waits for at exit). Do the first
  # two the same way, without the wait.
  settings = _run_settings(options)
  spec = trial.job_spec
  if settings["service_account"]:
    spec.service_account = settings["service_account"]
  if settings["network"]:
    spec.network = settings["network"]
  if (
    settings["timeout"]
    or settings["restart_job_on_worker_restart"]
    or settings["scheduling_strategy"]
  ):
    spec.scheduling = custom_job_types.Scheduling(
      timeout=(
        duration_pb2.Duration(seconds=settings["timeout"])
        if settings["timeout"]
        else None
      ),
      restart_job_on_worker_restart=settings["restart_job_on_worker_restart"],
      strategy=settings["scheduling_strategy"],
    )
  if settings["tensorboard"]:
    spec.tensorboard = settings["tensorboard"]
  job = aiplatform.HyperparameterTuningJob(
    display_name=request["displayName"],
    custom_job=trial,
    metric_spec={options["metric"]: tuning.goal(options).lower()},
    parameter_spec=tuning.sdk_parameters(parameters),
    max_trial_count=options["max_trials"],
    parallel_trial_count=options["parallel_trials"],
    max_failed_trial_count=options["max_failed_trials"],
    search_algorithm=tuning.SEARCH_ALGORITHMS[options["search_algorithm"]],
    measurement_selection="best",
    labels=request.get("labels"),
  )
  job._gca_resource = job.api_client.create_hyperparameter_tuning_job(
    parent=aiplatform.initializer.global_config.common_location_path(),
    hyperparameter_tuning_job=job._gca_resource,
  )
  return job


def wait(job, poll_secs):
  """Prints state changes until the job ends; returns True on success."""
  last = None
  while True:
    state = job.state.name
    if state != last:
      print(f"{datetime.datetime.now():%H:%M:%S} {state}", flush=True)
      last = state
    if state in TERMINAL_STATES:
      return state == "JOB_STATE_SUCCEEDED"
    time.sleep(poll_secs)


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
    trainer = validate(options, trainer_args)
    parameters = tuning.validate(options, trainer_args, trainer)
  except (LaunchError, tuning.TuningError) as e:
    print(f"Error: {e}", file=sys.stderr)
    return 2
  display_name = FLAGS.display_name or (
    f"alexnet-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}"
  )
  if options["tune"]:
    # Every trial is this CustomJob, its trainers told what to report.
    trial_args = tuning.trial_trainer_args(options, trainer_args)
    request = tuning.job_request(
      options,
      parameters,
      job_request(options, trial_args, display_name, trainer),
    )
  else:
    request = job_request(options, trainer_args, display_name, trainer)
  if FLAGS.dry_run:
    print(json.dumps(request, indent=2))
    return 0
  if not options["container_image"]:  # The container already holds the code.
    with tempfile.TemporaryDirectory() as scratch:
      uri = package_uri(options, display_name)
      print(f"Uploading the package to {uri}", flush=True)
      upload(build_sdist(scratch), uri, options["project"])
  if options["tune"]:
    job = submit_tuning(options, request, parameters)
    print(f"Submitted {job.resource_name}", flush=True)
    print(
      f"Trials: gcloud ai hp-tuning-jobs describe {job.name} "
      f"--project={options['project']} --region={options['region']}",
      flush=True,
    )
  else:
    job = submit(options, request)
    print(f"Submitted {job.resource_name}", flush=True)
    print(
      f"Console: https://console.cloud.google.com/vertex-ai/locations/"
      f"{options['region']}/training/{job.name}/cpu?project="
      f"{options['project']}",
      flush=True,
    )
  if FLAGS.wait:
    return 0 if wait(job, FLAGS.poll_secs) else 1
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main)
