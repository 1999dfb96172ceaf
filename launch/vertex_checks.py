"""Checks launch.vertex's options and the trainer flags before anything is
built, uploaded or submitted.

Each check raises LaunchError: one line naming the flag and the value that
is wrong. `validate` runs them all, in the order a user fixes them: the job's
own options, the trainer flags, the machines and pools, what the trainer
flags ask of them, the paths and labels, then the image.
"""

from __future__ import annotations

from collections.abc import Sequence
import datetime
import re
from typing import Any

from launch import platforms
from launch import trainer_flags
from trainer import config as config_lib
from trainer.errors import UserError

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
# Where Vertex mounts Cloud Storage buckets (Cloud Storage FUSE).
CLOUD_STORAGE_PATH = re.compile(r"(gs://|/gcs/)[^/]+")
OUTPUT_DIR_HELP = {
  "base_output_dir": "a gs:// path for the job's outputs",
  "staging_bucket": "a gs:// path for the package and Vertex's staging files",
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
  check_job_options(options)
  trainer = parse_trainer_flags(trainer_args)
  check_pools(options, trainer.config)
  check_machine(options)
  check_strategy(options, trainer.config)
  check_trainer_paths(trainer.config)
  check_labels(options)
  check_images(options, today)
  return trainer


def check_job_options(options: dict[str, Any]) -> None:
  """The project, the gs:// output and staging paths, one kind of image."""
  if not options["project"]:
    raise LaunchError("--project is required")
  container = options["container_image"]
  for name, help_text in OUTPUT_DIR_HELP.items():
    value = options[name]
    if (
      not value
      and name == "staging_bucket"
      and not options["executor_image_uri"]
    ):
      # No package to stage; a build context goes to the output dir.
      continue
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


def parse_trainer_flags(
  trainer_args: Sequence[str],
) -> trainer_flags.TrainerFlags:
  """The flags after `--`, parsed as the trainer will parse them."""
  try:
    return trainer_flags.parse(trainer_args)
  except UserError as e:
    raise LaunchError(str(e)) from None


def check_pools(options: dict[str, Any], config: config_lib.Config) -> None:
  """The worker and tf.data service pools: their sizes and machines."""
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


def check_machine(options: dict[str, Any]) -> None:
  """The accelerator, its count and the machine type fit together."""
  accelerator, count = options["accelerator_type"], options["accelerator_count"]
  machine = options["machine_type"]
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
    _check_gpu_machine(accelerator, count, machine)
  if accelerator in TPU_MACHINES:
    _check_tpu_machine(options, accelerator, count, machine)
  elif machine.startswith(TPU_MACHINE_PREFIXES):
    raise LaunchError(
      f"--machine_type={machine} needs a TPU --accelerator_type"
    )


def _check_built_in_count(machine, suffix, what, count):
  """A machine type that names its accelerator count (a2-highgpu-4g,
  ct5lp-hightpu-4t: the number before `suffix`) must match the count."""
  built_in = re.search(rf"-(\d+){suffix}$", machine)
  if built_in and int(built_in.group(1)) != count:
    raise LaunchError(
      f"--machine_type={machine} has {built_in.group(1)} {what}; "
      f"got --accelerator_count={count}"
    )


def _check_gpu_machine(accelerator, count, machine):
  family = GPU_MACHINES[accelerator]
  if not machine.startswith(family):
    raise LaunchError(
      f"--accelerator_type={accelerator} runs on {family}* "
      f"machines, not --machine_type={machine}"
    )
  _check_built_in_count(machine, "g", "GPUs", count)
  if family == "n1-" and count not in (1, 2, 4, 8):
    raise LaunchError(
      f"--accelerator_count={count}: n1 machines take 1, 2, 4 or 8 GPUs"
    )


def _check_tpu_machine(options, accelerator, count, machine):
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
  _check_built_in_count(machine, "t", "TPU chips", count)
  for name in ("workers", "data_service_workers"):
    if options[name]:
      raise LaunchError(
        f"--{name} is not supported with TPU machines; use a larger TPU slice"
      )
  if options["executor_image_uri"]:
    raise LaunchError(
      f"--accelerator_type={accelerator} runs this package's TPU image "
      "(Dockerfile.tpu; built for you without --executor_image_uri): "
      "pip would replace tensorflow-tpu on a prebuilt image"
    )


def check_strategy(options: dict[str, Any], config: config_lib.Config) -> None:
  """What the trainer flags ask of the job (a strategy, the tf.data service,
  an accelerator) is what its machines and pools give."""
  accelerator = options["accelerator_type"]
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


def check_trainer_paths(config: config_lib.Config) -> None:
  """The trainer's data and model dir are on Cloud Storage."""
  for name in ("train_data", "eval_data", "model_dir"):
    value = getattr(config, name)
    if value and not CLOUD_STORAGE_PATH.match(value):
      raise LaunchError(
        f"trainer flag --{name}={value} is a local path; "
        "Vertex AI machines read Cloud Storage as "
        "gs://BUCKET/... or /gcs/BUCKET/... (Cloud Storage "
        "FUSE)"
      )


def check_labels(options: dict[str, Any]) -> None:
  """--labels are key=value as Vertex AI takes them."""
  for label in options["labels"]:
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}=[a-z0-9_-]{0,63}", label):
      raise LaunchError(
        f"--labels: {label!r} is not key=value in lowercase "
        "letters, digits, - and _"
      )


def check_images(options, today=None):
  """Refuses a prebuilt --executor_image_uri that cannot start: past its
  end of availability, or outside this package's TensorFlow range
  (launch.platforms). Without one, the job runs this package's own image.

  Raises:
    LaunchError: one line with the date or version, its source and what to
      use instead.
  """
  today = today or datetime.date.today()
  instead = (
    "omit --executor_image_uri: launch.vertex then builds this package's "
    "image with Cloud Build"
  )
  uri = options["executor_image_uri"]
  if options["container_image"] or not uri:
    return
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
