"""The Vertex AI requests launch.vertex submits, as the REST API takes them
(camelCase JSON): the CustomJob's worker pools and each pool's code
(pythonPackageSpec or containerSpec), and with --tune the
HyperparameterTuningJob whose trials run it (its study: launch/tuning.py).

Builds dictionaries only: nothing here uploads, submits or imports the cloud
client.
"""

from __future__ import annotations

from collections.abc import Sequence
import os
import re
from typing import Any

from launch import trainer_flags
from launch import tuning
from launch.vertex_checks import TPU_MACHINES
from launch.vertex_checks import accelerator_kind

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_NAME = "alexnet-tf"
V5E_TOPOLOGY = {"1t": "1x1", "4t": "2x2", "8t": "2x4"}


def build_request(
  options: dict[str, Any],
  parameters: Sequence[tuning.Parameter],
  trainer_args: Sequence[str],
  display_name: str,
  trainer: trainer_flags.TrainerFlags,
) -> dict[str, Any]:
  """What main submits: the CustomJob, or with --tune the tuning job.

  Args:
    options: the launcher's flag values.
    parameters: the tuned parameters (`tuning.validate`); read with --tune.
    trainer_args: the flags after `--`.
    display_name: the job's name.
    trainer: the same flags parsed (`TrainerFlags`).
  """
  if options["tune"]:
    # Every trial is this CustomJob, its trainers told what to report.
    trial_args = tuning.trial_trainer_args(options, trainer_args)
    return tuning.job_request(
      options,
      parameters,
      job_request(options, trial_args, display_name, trainer),
    )
  return job_request(options, trainer_args, display_name, trainer)


def job_request(
  options: dict[str, Any],
  trainer_args: Sequence[str],
  display_name: str,
  trainer: trainer_flags.TrainerFlags,
) -> dict[str, Any]:
  """The CustomJob as Vertex AI's REST API receives it (camelCase JSON)."""
  job_spec = {
    "workerPoolSpecs": worker_pool_specs(
      options, trainer_args, display_name, trainer
    ),
    "baseOutputDirectory": {"outputUriPrefix": options["base_output_dir"]},
  }
  if options["service_account"]:
    job_spec["serviceAccount"] = options["service_account"]
  if options["network"]:
    job_spec["network"] = options["network"]
  if options["tensorboard"]:
    job_spec["tensorboard"] = options["tensorboard"]
  scheduling = _scheduling(options)
  if scheduling:
    job_spec["scheduling"] = scheduling
  request = {"displayName": display_name, "jobSpec": job_spec}
  if options["labels"]:
    request["labels"] = dict(label.split("=", 1) for label in options["labels"])
  return request


def worker_pool_specs(
  options: dict[str, Any],
  trainer_args: Sequence[str],
  display_name: str,
  trainer: trainer_flags.TrainerFlags,
) -> list[dict[str, Any]]:
  """Pool 0 the chief, pool 1 the --workers, pool 2 the tf.data service."""
  pool = {
    "machineSpec": machine_spec(options),
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
  return pools


def machine_spec(options: dict[str, Any]) -> dict[str, Any]:
  """The trainers' machine: its type, accelerators and TPU topology."""
  spec = {"machineType": options["machine_type"]}
  if options["accelerator_type"]:
    spec["acceleratorType"] = options["accelerator_type"]
    spec["acceleratorCount"] = options["accelerator_count"]
  if options["machine_type"].startswith("ct5lp-hightpu-"):
    spec["tpuTopology"] = options["tpu_topology"] or V5E_TOPOLOGY.get(
      options["machine_type"].rsplit("-", 1)[1], "2x2"
    )
  return spec


def _scheduling(options: dict[str, Any]) -> dict[str, Any]:
  """Timeout, restarts and Spot VMs; empty when all are Vertex's defaults."""
  scheduling: dict[str, Any] = {}
  if options["timeout_hours"]:
    scheduling["timeout"] = f"{options['timeout_hours'] * 3600}s"
  if options["restart_job_on_worker_restart"]:
    scheduling["restartJobOnWorkerRestart"] = True
  if options["spot"]:
    scheduling["strategy"] = "SPOT"
  return scheduling


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
