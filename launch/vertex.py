"""Submit training to Vertex AI: python -m launch.vertex [FLAGS] -- [TRAINER FLAGS]

    python -m launch.vertex --project=P --region=us-central1 \
        --staging_bucket=gs://b/staging --machine_type=n1-standard-16 \
        --accelerator_type=NVIDIA_TESLA_V100 --accelerator_count=4 \
        --base_output_dir=gs://b/runs/1 --dry_run -- --strategy=mirrored \
        --train_data='gs://b/data/train-*'

Builds an sdist of this package (setup.py), uploads it to --staging_bucket
and creates a CustomJob whose worker pools run `python -m trainer.task` with
the trainer flags after `--`. Shapes:

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

--base_output_dir makes Vertex set AIP_MODEL_DIR, AIP_CHECKPOINT_DIR and
AIP_TENSORBOARD_LOG_DIR, which the trainer uses when its own flags are not
given. --dry_run prints the job request as JSON and submits nothing. Flag
values are checked before anything is built or uploaded. Submitting never
imports TensorFlow; google-cloud-aiplatform is imported only to submit.
"""

import datetime
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_NAME = "alexnet-tf"

FLAGS = flags.FLAGS
flags.DEFINE_string("project", None, "Google Cloud project id.")
flags.DEFINE_string("region", "us-central1", "Vertex AI region.")
flags.DEFINE_string("staging_bucket", None, "gs:// path for the package and "
                    "Vertex's staging files.")
flags.DEFINE_string("display_name", "", "Job name; default alexnet-<time>.")
flags.DEFINE_string("machine_type", "n1-standard-8", "Machine of every replica.")
flags.DEFINE_string("accelerator_type", "", "e.g. NVIDIA_TESLA_T4, "
                    "NVIDIA_TESLA_V100, NVIDIA_L4, NVIDIA_TESLA_A100, "
                    "NVIDIA_A100_80GB, NVIDIA_H100_80GB, TPU_V2, TPU_V3, "
                    "TPU_V5_LITEPOD; empty = CPU only.")
flags.DEFINE_integer("accelerator_count", 0, "Accelerators per replica.")
flags.DEFINE_integer("workers", 0, "Extra machines beside the chief (0 = one "
                     "machine).")
flags.DEFINE_integer("data_service_workers", 0, "CPU machines (worker pool "
                     "2) that decode and augment for the trainers through a "
                     "tf.data service; 0 = the trainers' own CPUs do it.")
flags.DEFINE_string("data_service_machine_type", "n1-highcpu-16", "Machine of "
                    "each --data_service_workers replica.")
flags.DEFINE_string("tpu_topology", "", "TPU v5e topology, e.g. 2x2 "
                    "(default from the machine type).")
flags.DEFINE_integer("boot_disk_gb", 100, "Boot disk per replica.")
flags.DEFINE_string("base_output_dir", None, "gs:// dir for the model, "
                    "checkpoints and TensorBoard logs (sets AIP_*_DIR).")
flags.DEFINE_string("executor_image_uri", "", "Prebuilt training image; "
                    "default matches the accelerator and TensorFlow version.")
flags.DEFINE_bool("spot", False, "Run on Spot VMs (cheaper, preemptible; the "
                  "trainer checkpoints on SIGTERM and resumes).")
flags.DEFINE_bool("restart_job_on_worker_restart", False, "Restart the whole "
                  "job when a worker restarts.")
flags.DEFINE_integer("timeout_hours", 0, "Cancel the job after this long (0 = "
                     "Vertex's default, 7 days).")
flags.DEFINE_string("service_account", "", "Service account the job runs as.")
flags.DEFINE_string("network", "", "VPC network (projects/N/global/networks/X).")
flags.DEFINE_list("labels", [], "key=value labels.")
flags.DEFINE_string("tensorboard", "", "Vertex TensorBoard instance "
                    "(projects/P/locations/L/tensorboards/ID) to stream logs to.")
flags.DEFINE_string("api_endpoint", "", "Vertex API endpoint override (private "
                    "endpoints; http:// endpoints use no credentials).")
flags.DEFINE_bool("dry_run", False, "Print the job request as JSON; submit "
                  "nothing.")
flags.DEFINE_bool("wait", False, "Stream the job's state until it ends; exit "
                  "non-zero unless it succeeds.")
flags.DEFINE_integer("poll_secs", 30, "--wait polling interval.")

# Accelerator -> machine-type families it can be attached to.
GPU_MACHINES = {
    "NVIDIA_TESLA_K80": "n1-", "NVIDIA_TESLA_P4": "n1-",
    "NVIDIA_TESLA_P100": "n1-", "NVIDIA_TESLA_V100": "n1-",
    "NVIDIA_TESLA_T4": "n1-", "NVIDIA_L4": "g2-",
    "NVIDIA_TESLA_A100": "a2-highgpu-", "NVIDIA_A100_80GB": "a2-ultragpu-",
    "NVIDIA_H100_80GB": "a3-highgpu-",
}
TPU_MACHINES = {"TPU_V2": "cloud-tpu", "TPU_V3": "cloud-tpu",
                "TPU_V5_LITEPOD": "ct5lp-hightpu-"}
TPU_MACHINE_PREFIXES = ("cloud-tpu", "ct5lp")
V5E_TOPOLOGY = {"1t": "1x1", "4t": "2x2", "8t": "2x4"}
# Newest prebuilt training images (TF 2.17); pip then installs this
# package's pinned TensorFlow on top.
IMAGE = "{region}-docker.pkg.dev/vertex-ai/training/tf-{kind}.2-17.py310:latest"
TERMINAL_STATES = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED",
                   "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


class LaunchError(Exception):
  """A flag value Vertex would reject; one line."""


def _trainer_flag(args, name):
  for arg in args:
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
  return None


def validate(options, trainer_args):
  """Checks every value before anything is built, uploaded or submitted."""
  if not options["project"]:
    raise LaunchError("--project is required")
  for name in ("staging_bucket", "base_output_dir"):
    if not (options[name] or "").startswith("gs://"):
      raise LaunchError(f"--{name} must be a gs:// path, got {options[name]!r}")
  accelerator, count = options["accelerator_type"], options["accelerator_count"]
  machine = options["machine_type"]
  for name in ("workers", "data_service_workers"):
    if options[name] < 0:
      raise LaunchError(f"--{name} must be >= 0, got {options[name]}")
  if options["data_service_workers"]:
    if _trainer_flag(trainer_args, "data_service") is not None:
      raise LaunchError("--data_service_workers starts the job's own tf.data "
                        "service; drop the trainer flag --data_service")
    if options["data_service_machine_type"].startswith(TPU_MACHINE_PREFIXES):
      raise LaunchError("--data_service_machine_type must be a CPU machine, "
                        f"got {options['data_service_machine_type']}")
  if accelerator and accelerator not in GPU_MACHINES and accelerator not in TPU_MACHINES:
    raise LaunchError(f"--accelerator_type={accelerator} is not one of "
                      f"{', '.join(list(GPU_MACHINES) + list(TPU_MACHINES))}")
  if accelerator and count < 1:
    raise LaunchError(f"--accelerator_type={accelerator} needs "
                      f"--accelerator_count >= 1")
  if not accelerator and count:
    raise LaunchError("--accelerator_count without --accelerator_type")
  if accelerator in GPU_MACHINES:
    family = GPU_MACHINES[accelerator]
    if not machine.startswith(family):
      raise LaunchError(f"--accelerator_type={accelerator} runs on {family}* "
                        f"machines, not --machine_type={machine}")
    fixed = re.search(r"-(\d+)g$", machine)
    if fixed and int(fixed.group(1)) != count:
      raise LaunchError(f"--machine_type={machine} has {fixed.group(1)} GPUs; "
                        f"got --accelerator_count={count}")
    if family == "n1-" and count not in (1, 2, 4, 8):
      raise LaunchError(f"--accelerator_count={count}: n1 machines take 1, 2, "
                        "4 or 8 GPUs")
  if accelerator in TPU_MACHINES:
    if not machine.startswith(TPU_MACHINES[accelerator]):
      raise LaunchError(f"--accelerator_type={accelerator} needs "
                        f"--machine_type={TPU_MACHINES[accelerator]}*, got "
                        f"{machine}")
    if machine == "cloud-tpu" and count != 8:
      raise LaunchError(f"--machine_type=cloud-tpu takes 8 TPU cores "
                        f"(v2-8/v3-8), got --accelerator_count={count}")
    chips = re.search(r"-(\d+)t$", machine)
    if chips and int(chips.group(1)) != count:
      raise LaunchError(f"--machine_type={machine} has {chips.group(1)} TPU "
                        f"chips; got --accelerator_count={count}")
    for name in ("workers", "data_service_workers"):
      if options[name]:
        raise LaunchError(f"--{name} is not supported with TPU machines; use "
                          "a larger TPU slice")
  elif machine.startswith(TPU_MACHINE_PREFIXES):
    raise LaunchError(f"--machine_type={machine} needs a TPU --accelerator_type")
  strategy = _trainer_flag(trainer_args, "strategy")
  if options["workers"] and strategy not in (None, "auto", "multi_worker"):
    raise LaunchError(f"--workers={options['workers']} runs multi_worker; "
                      f"trainer flag --strategy={strategy} contradicts it")
  if accelerator in TPU_MACHINES and strategy not in (None, "auto", "tpu"):
    raise LaunchError(f"a TPU job needs --strategy=tpu or auto, got {strategy}")
  for name in ("train_data", "eval_data", "model_dir"):
    value = _trainer_flag(trainer_args, name)
    if value and not value.startswith("gs://"):
      raise LaunchError(f"trainer flag --{name}={value} is a local path; "
                        "Vertex AI machines read only gs:// paths")
  for label in options["labels"]:
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}=[a-z0-9_-]{0,63}", label):
      raise LaunchError(f"--labels: {label!r} is not key=value in lowercase "
                        "letters, digits, - and _")


def executor_image(options, accelerator=None):
  """The prebuilt image for `accelerator` (default: the trainers')."""
  if accelerator is None:
    accelerator = options["accelerator_type"]
    if options["executor_image_uri"]:
      return options["executor_image_uri"]
  region = options["region"].split("-")[0]
  region = {"us": "us", "europe": "europe", "asia": "asia"}.get(region, "us")
  kind = "cpu"
  if accelerator in GPU_MACHINES:
    kind = "gpu"
  elif accelerator in TPU_MACHINES:
    kind = "tpu"
  return IMAGE.format(region=region, kind=kind)


def package_uri(options, display_name):
  return (f"{options['staging_bucket'].rstrip('/')}/{PACKAGE_NAME}/{display_name}/"
          f"{PACKAGE_NAME}-{_version()}.tar.gz")


def _version():
  text = open(os.path.join(REPO, "setup.py"), encoding="utf-8").read()
  return re.search(r'version="([^"]+)"', text).group(1)


def trainer_args_for(options, trainer_args):
  """The trainer's flags, plus the strategy the shape implies if unset."""
  args = list(trainer_args)
  if _trainer_flag(args, "strategy") is None:
    if options["accelerator_type"] in TPU_MACHINES:
      args += ["--strategy=tpu", "--tpu=local"]
    elif options["workers"]:
      args.append("--strategy=multi_worker")
  if options["data_service_workers"]:
    args.append("--data_service=vertex")
  return args


def job_request(options, trainer_args, display_name):
  """The CustomJob as Vertex AI's REST API receives it (camelCase JSON)."""
  machine_spec = {"machineType": options["machine_type"]}
  if options["accelerator_type"]:
    machine_spec["acceleratorType"] = options["accelerator_type"]
    machine_spec["acceleratorCount"] = options["accelerator_count"]
  if options["machine_type"].startswith("ct5lp-hightpu-"):
    machine_spec["tpuTopology"] = options["tpu_topology"] or V5E_TOPOLOGY.get(
        options["machine_type"].rsplit("-", 1)[1], "2x2")
  pool = {
      "machineSpec": machine_spec,
      "replicaCount": "1",
      "diskSpec": {"bootDiskType": "pd-ssd",
                   "bootDiskSizeGb": options["boot_disk_gb"]},
      "pythonPackageSpec": {
          "executorImageUri": executor_image(options),
          "packageUris": [package_uri(options, display_name)],
          "pythonModule": "trainer.task",
          "args": trainer_args_for(options, trainer_args),
      },
  }
  pools = [pool]
  if options["workers"]:
    pools.append({**pool, "replicaCount": str(options["workers"])})
  if options["data_service_workers"]:
    if not options["workers"]:
      pools.append({})  # Vertex's way to leave pool 1 (workers) empty.
    pools.append({
        "machineSpec": {"machineType": options["data_service_machine_type"]},
        "replicaCount": str(options["data_service_workers"]),
        "diskSpec": pool["diskSpec"],
        "pythonPackageSpec": {
            "executorImageUri": executor_image(options, accelerator=""),
            "packageUris": pool["pythonPackageSpec"]["packageUris"],
            "pythonModule": "trainer.data_service",
            "args": ["--role=vertex"],
        },
    })
  job_spec = {"workerPoolSpecs": pools,
              "baseOutputDirectory": {"outputUriPrefix": options["base_output_dir"]}}
  if options["service_account"]:
    job_spec["serviceAccount"] = options["service_account"]
  if options["network"]:
    job_spec["network"] = options["network"]
  if options["tensorboard"]:
    job_spec["tensorboard"] = options["tensorboard"]
  scheduling = {}
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
  subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir",
                  out_dir], cwd=REPO, check=True, capture_output=True)
  (path,) = glob.glob(os.path.join(out_dir, "*.tar.gz"))
  return path


def upload(local_path, gs_uri, project):
  from google.cloud import storage  # pylint: disable=g-import-not-at-top
  bucket, _, name = gs_uri[len("gs://"):].partition("/")
  credentials = None
  if os.environ.get("STORAGE_EMULATOR_HOST"):
    # A local emulator takes no credentials.
    from google.auth.credentials import AnonymousCredentials  # pylint: disable=g-import-not-at-top
    credentials = AnonymousCredentials()
  client = storage.Client(project=project, credentials=credentials)
  client.bucket(bucket).blob(name).upload_from_filename(local_path)


def _snake(name):
  return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def submit(options, request):
  """Creates the CustomJob with the real client; returns the job."""
  from google.cloud import aiplatform  # pylint: disable=g-import-not-at-top
  from google.cloud.aiplatform_v1.types import custom_job as custom_job_types  # pylint: disable=g-import-not-at-top
  init = {"project": options["project"], "location": options["region"],
          "staging_bucket": options["staging_bucket"]}
  if options["api_endpoint"]:
    init["api_endpoint"] = options["api_endpoint"]
    init["api_transport"] = "rest"
    if options["api_endpoint"].startswith("http://"):
      from google.auth.credentials import AnonymousCredentials  # pylint: disable=g-import-not-at-top
      init["credentials"] = AnonymousCredentials()
  aiplatform.init(**init)
  spec = custom_job_types.CustomJobSpec.from_json(json.dumps(request["jobSpec"]))
  job = aiplatform.CustomJob(
      display_name=request["displayName"],
      worker_pool_specs=list(spec.worker_pool_specs),
      base_output_dir=options["base_output_dir"],
      labels=request.get("labels"), staging_bucket=options["staging_bucket"])
  scheduling = request["jobSpec"].get("scheduling", {})
  strategy = None
  if scheduling.get("strategy") == "SPOT":
    strategy = custom_job_types.Scheduling.Strategy.SPOT
  job.submit(service_account=options["service_account"] or None,
             network=options["network"] or None,
             timeout=options["timeout_hours"] * 3600 or None,
             restart_job_on_worker_restart=options["restart_job_on_worker_restart"],
             tensorboard=options["tensorboard"] or None,
             scheduling_strategy=strategy)
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


def options_from_flags():
  return {name: FLAGS[name].value for name in (
      "project", "region", "staging_bucket", "machine_type", "accelerator_type",
      "accelerator_count", "workers", "data_service_workers",
      "data_service_machine_type", "tpu_topology", "boot_disk_gb",
      "base_output_dir", "executor_image_uri", "spot",
      "restart_job_on_worker_restart", "timeout_hours", "service_account",
      "network", "labels", "tensorboard", "api_endpoint")}


def main(argv):
  trainer_args = argv[1:]
  options = options_from_flags()
  try:
    validate(options, trainer_args)
  except LaunchError as e:
    print(f"Error: {e}", file=sys.stderr)
    return 2
  display_name = FLAGS.display_name or (
      f"alexnet-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}")
  request = job_request(options, trainer_args, display_name)
  if FLAGS.dry_run:
    print(json.dumps(request, indent=2))
    return 0
  with tempfile.TemporaryDirectory() as scratch:
    uri = request["jobSpec"]["workerPoolSpecs"][0]["pythonPackageSpec"]["packageUris"][0]
    print(f"Uploading the package to {uri}", flush=True)
    upload(build_sdist(scratch), uri, options["project"])
  job = submit(options, request)
  print(f"Submitted {job.resource_name}", flush=True)
  print(f"Console: https://console.cloud.google.com/vertex-ai/locations/"
        f"{options['region']}/training/{job.name}/cpu?project={options['project']}",
        flush=True)
  if FLAGS.wait:
    return 0 if wait(job, FLAGS.poll_secs) else 1
  return 0


if __name__ == "__main__":
  app.run(main)
