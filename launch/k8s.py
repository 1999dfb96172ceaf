"""Run training on Kubernetes (GKE): python -m launch.k8s [FLAGS] -- [TRAINER FLAGS]

    python -m launch.k8s --workers=2 --accelerator=nvidia-l4 --project=P \\
        --dry_run -- --config=cats_vs_dogs --train_data='gs://b/data/train-*' \\
        --model_dir=gs://b/runs/1
    python -m launch.k8s ... --apply          # submit with the kubernetes client
    python -m launch.k8s --delete=NAME        # remove it

Writes a JobSet (jobset.x-k8s.io/v1alpha2): a replicated job per role (the
chief, the other trainers, and with --data_service_workers a tf.data service
dispatcher and workers), pod DNS names from the JobSet's headless Service,
TF_CONFIG built in each pod by launch.k8s_pod, GPU or single-host TPU node
selectors and limits, a Kubernetes service account for Workload Identity,
and a failure policy: a preempted trainer (exit 75 after its SIGTERM
checkpoint, or evicted) restarts the set from its checkpoint uncounted,
anything else counts against --max_restarts. --format=indexed-job writes an
Indexed Job per role and a headless Service instead, for clusters without
the JobSet controller (launch/k8s_manifests.py).

The image: --image=URI, or with --project this package's image tagged by
content in Artifact Registry (built by Cloud Build on --apply when missing,
as launch.vertex does). The trainer flags are parsed into the trainer's
Config here: a typo is one line before anything is written. Never imports
TensorFlow.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
from typing import Any

from absl import app
from absl import flags

from launch import flag_defaults
from launch import image_build
from launch import k8s_manifests
from launch import platforms
from launch import trainer_flags
from launch.vertex_checks import LaunchError
from trainer.errors import UserError

FLAGS = flags.FLAGS
FORMATS = ("jobset", "indexed-job")


def define_flags(flag_values=FLAGS):
  """The launcher's flags, defined when it runs as the command."""
  d = dict(flag_values=flag_values)
  flags.DEFINE_string(
    "name", "", "The job's name; default alexnet-<time>.", **d
  )
  flags.DEFINE_string("namespace", "default", "Kubernetes namespace.", **d)
  flags.DEFINE_enum(
    "format",
    "jobset",
    list(FORMATS),
    "jobset (needs the JobSet controller) or indexed-job (an Indexed Job "
    "per role and a headless Service).",
    **d,
  )
  flags.DEFINE_string(
    "image", "", "The trainer image (default: --project's build).", **d
  )
  flags.DEFINE_string(
    "project",
    "",
    "Google Cloud project of the image built from this package.",
    **d,
  )
  flags.DEFINE_string("region", "us-central1", "Artifact Registry region.", **d)
  flags.DEFINE_string(
    "repository", "alexnet", "Artifact Registry Docker repository.", **d
  )
  flags.DEFINE_string(
    "staging_bucket",
    "",
    "gs:// path for the image build's context (--apply).",
    **d,
  )
  flags.DEFINE_integer("workers", 1, "Trainer pods, the chief included.", **d)
  flags.DEFINE_integer(
    "data_service_workers",
    0,
    "tf.data service worker pods (plus a dispatcher) that decode and "
    "augment for the trainers; 0 = none.",
    **d,
  )
  flags.DEFINE_string(
    "accelerator",
    "",
    "A GKE GPU (cloud.google.com/gke-accelerator, e.g. nvidia-l4) or TPU "
    "(cloud.google.com/gke-tpu-accelerator, e.g. tpu-v5-lite-podslice) "
    "node label; empty = CPU.",
    **d,
  )
  flags.DEFINE_integer(
    "gpus", 1, "GPUs per trainer pod (GPU --accelerator).", **d
  )
  flags.DEFINE_string(
    "tpu_topology", "", "TPU slice topology, e.g. 2x4 (one host).", **d
  )
  flags.DEFINE_string("cpu", "4", "CPU request per trainer pod.", **d)
  flags.DEFINE_string(
    "memory", "16Gi", "Memory request and limit per trainer pod.", **d
  )
  flags.DEFINE_string(
    "data_service_cpu", "8", "CPU request per data service pod.", **d
  )
  flags.DEFINE_string(
    "data_service_memory",
    "16Gi",
    "Memory request and limit per data service pod.",
    **d,
  )
  flags.DEFINE_string(
    "service_account",
    "",
    "Kubernetes service account the pods run as: bind it to a Google "
    "service account with Workload Identity to reach gs:// (never a key file).",
    **d,
  )
  flags.DEFINE_multi_string(
    "volume",
    [],
    "CLAIM:/mount/path: mount a PersistentVolumeClaim (ReadWriteMany, e.g. "
    "Filestore) in every pod; --model_dir and data may then be under it.",
    **d,
  )
  flags.DEFINE_string(
    "queue", "", "Kueue LocalQueue (kueue.x-k8s.io/queue-name label).", **d
  )
  flags.DEFINE_integer(
    "max_restarts",
    3,
    "Restarts after failures (preemptions are not counted).",
    **d,
  )
  flags.DEFINE_integer(
    "ttl_hours", 24, "Delete the finished job after this long.", **d
  )
  flags.DEFINE_integer(
    "grace_secs",
    120,
    "SIGTERM to kill: time for the trainer's checkpoint.",
    **d,
  )
  flags.DEFINE_string("out", "", "Write the manifest to DIR/NAME.yaml.", **d)
  flags.DEFINE_bool("dry_run", False, "Print the manifest; apply nothing.", **d)
  flags.DEFINE_bool("apply", False, "Submit with the kubernetes client.", **d)
  flags.DEFINE_string(
    "delete", "", "Delete the job of this name and exit.", **d
  )
  flags.DEFINE_string(
    "context", "", "kubeconfig context (default: current).", **d
  )


# The image's project in a manifest written without --image or --project.
PROJECT_PLACEHOLDER = "PROJECT"
NAME = re.compile(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?")
# A PersistentVolumeClaim's name: a DNS-1123 subdomain.
CLAIM = re.compile(r"[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?")
MINIMUM = {
  "workers": 1,
  "data_service_workers": 0,
  "max_restarts": 0,
  "ttl_hours": 0,
  "grace_secs": 0,
}
# A pod's name (and hostname) is at most 63 characters; Kubernetes adds a
# random "-xxxxx" to the Job's name and index.
POD_NAME_LIMIT = 63 - len("-xxxxx")


def _check_pod_names(options):
  """The longest pod name the job makes fits."""
  longest = max(
    (
      f"{options['name']}-{role}-0-{pods - 1}"
      for role, pods in (
        ("chief", 1),
        ("worker", options["workers"] - 1),
        ("dispatcher", 1 if options["data_service_workers"] else 0),
        ("data-worker", options["data_service_workers"]),
      )
      if pods > 0
    ),
    key=len,
  )
  if len(longest) > POD_NAME_LIMIT:
    raise LaunchError(
      f"--name={options['name']}: its pods' names would reach "
      f"{len(longest) + 6} characters ({longest}-xxxxx), over Kubernetes' 63;"
      " pick a shorter --name"
    )


def build_job(
  options: dict[str, Any], trainer_args: list[str], writes_only: bool = False
) -> k8s_manifests.Job:
  """The checked job. With `writes_only` (a manifest to print or write, not
  to apply) and no --image or --project, the image names PROJECT.

  Raises:
    LaunchError: one line naming the flag.
  """
  name = options["name"]
  if not NAME.fullmatch(name):
    raise LaunchError(
      f"--name={name!r}: lowercase letters, digits and -, starting with a "
      "letter, at most 40 characters (pod DNS names add to it)"
    )
  for flag, least in MINIMUM.items():
    if options[flag] < least:
      raise LaunchError(f"--{flag} must be >= {least}, got {options[flag]}")
  _check_pod_names(options)
  if options["format"] == "indexed-job":
    # Each Job would be its own workload, admitted apart (no gang), and a
    # data service Job never ends (its TTL never fires).
    for flag in ("queue", "data_service_workers"):
      if options[flag]:
        raise LaunchError(
          f"--{flag} needs --format=jobset: with Indexed Jobs "
          + (
            "Kueue admits each role apart"
            if flag == "queue"
            else "the data service pods would outlive training"
          )
        )
  try:
    trainer = trainer_flags.parse(trainer_args)
  except UserError as e:
    raise LaunchError(str(e)) from None
  config = trainer.config
  kind, tpu = _accelerator(options)
  volumes = _volumes(options)
  _check_trainer(options, config, kind, [path for _, path in volumes])
  image = options["image"]
  if not image:
    if not options["project"] and not writes_only:
      raise LaunchError(
        "--image=URI or --project (this package's image, built into "
        "Artifact Registry) is required"
      )
    image = plan_image(
      {**options, "project": options["project"] or PROJECT_PLACEHOLDER},
      tpu is not None,
    ).image
  job = k8s_manifests.Job(
    name=name,
    namespace=options["namespace"],
    image=image,
    trainer_args=(),
    workers=options["workers"],
    data_service_workers=options["data_service_workers"],
    gpu=options["accelerator"] if kind == "gpu" else "",
    gpus=options["gpus"] if kind == "gpu" else 0,
    tpu=tpu,
    cpu=options["cpu"],
    memory=options["memory"],
    data_service_cpu=options["data_service_cpu"],
    data_service_memory=options["data_service_memory"],
    service_account=options["service_account"],
    queue=options["queue"],
    max_restarts=options["max_restarts"],
    ttl_secs=options["ttl_hours"] * 3600,
    grace_secs=options["grace_secs"],
    format=options["format"],
    volumes=volumes,
  )
  args = k8s_manifests.implied_trainer_args(
    trainer_args,
    trainer.given,
    config.strategy,
    options["workers"],
    kind,
    bool(options["data_service_workers"]),
    bool(config.tpu),
    k8s_manifests.address(job, k8s_manifests.DISPATCHER)
    if options["data_service_workers"]
    else "",
  )
  import dataclasses

  return dataclasses.replace(job, trainer_args=tuple(args))


def _accelerator(options):
  """('none'|'gpu'|'tpu', the TPU slice or None)."""
  accelerator = options["accelerator"]
  if not accelerator:
    return "none", None
  if accelerator in platforms.GKE_GPU_ACCELERATORS:
    if options["gpus"] < 1:
      raise LaunchError(f"--gpus must be >= 1 with --accelerator={accelerator}")
    return "gpu", None
  slices = [s for s in platforms.GKE_TPU_SLICES if s.accelerator == accelerator]
  if not slices:
    known = ", ".join(
      platforms.GKE_GPU_ACCELERATORS
      + tuple(sorted({s.accelerator for s in platforms.GKE_TPU_SLICES}))
    )
    raise LaunchError(f"--accelerator={accelerator}: not one of {known}")
  topology = options["tpu_topology"]
  match = [s for s in slices if s.topology == topology]
  if not match:
    single = ", ".join(s.topology for s in slices)
    raise LaunchError(
      f"--tpu_topology={topology!r}: launch.k8s runs one-host slices of "
      f"{accelerator} ({single}); TensorFlow drives a multi-host slice from "
      "one client process, not a pod per host (see TPU VMs in the docs)"
    )
  if options["workers"] != 1:
    raise LaunchError(
      f"--workers={options['workers']} with a TPU: a slice is one trainer; "
      "use a larger --tpu_topology"
    )
  return "tpu", match[0]


def _volumes(options):
  out = []
  for value in options["volume"]:
    claim, _, path = value.partition(":")
    if not CLAIM.fullmatch(claim) or not path.startswith("/"):
      raise LaunchError(
        f"--volume={value!r}: expected CLAIM:/mount/path (a "
        "PersistentVolumeClaim's name and where pods mount it)"
      )
    out.append((claim, path.rstrip("/") or "/"))
  return tuple(out)


def _shared(path, mounts):
  """Whether every pod reads and writes `path`: gs://, or a volume's."""
  return path.startswith("gs://") or any(
    path == m or path.startswith(m.rstrip("/") + "/") for m in mounts
  )


def _check_trainer(options, config, kind, mounts):
  """What the trainer flags ask of the pods is what they get."""
  strategy = config.strategy
  if options["workers"] > 1 and strategy not in ("auto", "multi_worker"):
    raise LaunchError(
      f"--workers={options['workers']} runs multi_worker; trainer flag "
      f"--strategy={strategy} contradicts it"
    )
  if kind == "tpu" and strategy not in ("auto", "tpu"):
    raise LaunchError(f"a TPU job needs --strategy=tpu or auto, got {strategy}")
  if strategy == "tpu" and kind != "tpu":
    raise LaunchError(
      "trainer flag --strategy=tpu: the pods have no TPU (--accelerator)"
    )
  required = config.require_accelerator
  if required != "none" and required != kind:
    raise LaunchError(
      f"trainer flag --require_accelerator={required}: the pods have no "
      f"{required.upper()} (--accelerator={options['accelerator'] or 'none'})"
    )
  if not _shared(config.model_dir, mounts):
    raise LaunchError(
      f"trainer flag --model_dir={config.model_dir or '(unset)'}: pods keep "
      "nothing when they end, and every trainer writes there: a gs:// path, "
      "or one under a --volume"
    )
  for name in ("train_data", "eval_data"):
    value = getattr(config, name)
    if value and not _shared(value, mounts):
      raise LaunchError(
        f"trainer flag --{name}={value} is a local path; pods read gs:// "
        "or a --volume"
      )
  if config.data_service and options["data_service_workers"]:
    raise LaunchError(
      "trainer flag --data_service: --data_service_workers starts the job's "
      "own (drop one of them)"
    )


def plan_image(options, tpu):
  return image_build.plan(
    {
      "project": options["project"],
      "region": options["region"],
      "repository": options["repository"],
      "staging_bucket": options["staging_bucket"],
    },
    tpu=tpu,
  )


def to_yaml(objects: list[dict[str, Any]]) -> str:
  import yaml

  class Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data):
      del data
      return True  # Every object written out: no &id001 anchors.

  return "---\n".join(
    yaml.dump(o, Dumper=Dumper, sort_keys=False, default_flow_style=False)
    for o in objects
  )


def options_from_flags(flag_values=FLAGS) -> dict[str, Any]:
  names = [
    "name", "namespace", "format", "image", "project", "region", "repository",
    "staging_bucket", "workers", "data_service_workers", "accelerator", "gpus",
    "tpu_topology", "cpu", "memory", "data_service_cpu", "data_service_memory",
    "service_account", "queue", "max_restarts", "ttl_hours", "grace_secs",
    "context", "volume",
  ]  # fmt: skip
  options = {n: flag_values[n].value for n in names}
  if not options["name"]:
    now = datetime.datetime.now(datetime.timezone.utc)
    options["name"] = f"alexnet-{now:%Y%m%d-%H%M%S}"
  return options


def default_options(**changes: Any) -> dict[str, Any]:
  """The options `main` reads from the flags, at their defaults plus
  `changes`: for building and checking requests as functions."""
  return flag_defaults.options(
    define_flags, options_from_flags, "launch.k8s", changes
  )


def main(argv):
  options = options_from_flags()
  if FLAGS.delete:
    from launch import k8s_apply

    try:
      k8s_apply.delete(options, FLAGS.delete)
    except LaunchError as e:
      print(f"Error: {e}", file=sys.stderr)
      return 1
    return 0
  try:
    if FLAGS.apply and FLAGS.dry_run:
      raise LaunchError("--apply and --dry_run exclude each other")
    job = build_job(options, argv[1:], writes_only=not FLAGS.apply)
  except LaunchError as e:
    print(f"Error: {e}", file=sys.stderr)
    return 2
  objects = k8s_manifests.manifests(job)
  text = to_yaml(objects)
  if f"/{PROJECT_PLACEHOLDER}/" in job.image:
    print(
      f"Note: the image names project {PROJECT_PLACEHOLDER}: pass --project "
      "(or --image) for one a cluster can pull",
      file=sys.stderr,
    )
  if FLAGS.out:
    os.makedirs(FLAGS.out, exist_ok=True)
    path = os.path.join(FLAGS.out, f"{job.name}.yaml")
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
    print(f"Wrote {path}")
  if FLAGS.dry_run or not (FLAGS.apply or FLAGS.out):
    print(text, end="")
    return 0
  if FLAGS.apply:
    from launch import k8s_apply

    try:
      k8s_apply.apply(options, job, objects)
    except LaunchError as e:
      print(f"Error: {e}", file=sys.stderr)
      return 1
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main)
