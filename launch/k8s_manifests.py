"""The Kubernetes objects of a training job, as the API server takes them:
a JobSet (jobset.x-k8s.io/v1alpha2) with one replicated job per role, or,
for clusters without the JobSet controller, an Indexed Job per role and a
headless Service.

Roles: `chief` (trainer 0), `worker` (the other trainers), and with a
tf.data service `dispatcher` and `data-worker`. Every pod runs
`python -m launch.k8s_pod`, which builds TF_CONFIG inside the pod from the
role and index Kubernetes gives it (JOB_COMPLETION_INDEX) and the cluster
layout in its environment, then becomes the trainer or a data service
server: nothing is baked per pod.

Builds dictionaries only. Never imports TensorFlow or a Kubernetes client.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from typing import Any

from launch import platforms

TRAINER_PORT = 2222
DISPATCHER_PORT = 5050
DATA_WORKER_PORT = 5051
CHIEF, WORKER, DISPATCHER, DATA_WORKER = (
  "chief",
  "worker",
  "dispatcher",
  "data-worker",
)
CONTAINER = "trainer"
APP_LABEL = "app.kubernetes.io/name"
RUN_LABEL = "alexnet-tf/run"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
FORMAT_LABEL = "alexnet-tf/format"
# The trainer's exit code for "preempted (SIGTERM), saved, run again"
# (trainer.errors): a restart that the failure policy does not count against
# --max_restarts. Its "peer or storage stopped answering" (69) is counted: a
# worker that crashes for good would otherwise restart the set forever.
PREEMPTED_EXIT_CODE = 75
# The pod's environment that launch.k8s_pod reads.
ENV_ROLE = "ALEXNET_ROLE"
ENV_CLUSTER = "ALEXNET_CLUSTER"
ENV_HOST_PATTERN = "ALEXNET_HOST_PATTERN"
ENV_INDEX = "JOB_COMPLETION_INDEX"  # Set by Kubernetes in Indexed Jobs.


@dataclasses.dataclass(frozen=True)
class Role:
  name: str
  pods: int
  port: int
  resources: dict[str, Any]
  accelerated: bool  # Asks for the GPU or TPU nodes.


@dataclasses.dataclass(frozen=True)
class Job:
  """What launch.k8s's flags ask for (checked by launch.k8s)."""

  name: str
  namespace: str
  image: str
  trainer_args: tuple[str, ...]  # as the trainer runs them (implied added)
  workers: int = 1  # trainer pods, the chief included
  data_service_workers: int = 0
  gpu: str = ""  # a cloud.google.com/gke-accelerator value
  gpus: int = 0  # per trainer pod
  tpu: platforms.GkeTpuSlice | None = None
  cpu: str = "4"
  memory: str = "16Gi"
  data_service_cpu: str = "8"
  data_service_memory: str = "16Gi"
  service_account: str = ""  # Kubernetes service account (Workload Identity)
  queue: str = ""  # Kueue LocalQueue
  max_restarts: int = 3
  ttl_secs: int = 86400
  grace_secs: int = 120
  format: str = "jobset"  # or indexed-job
  # (PersistentVolumeClaim, mount path) in every pod: a shared file system
  # (e.g. Filestore, ReadWriteMany) for --model_dir or data.
  volumes: tuple[tuple[str, str], ...] = ()


def roles(job: Job) -> list[Role]:
  trainer = _resources(job.cpu, job.memory)
  if job.gpu:
    trainer["limits"]["nvidia.com/gpu"] = str(job.gpus)
  if job.tpu:
    trainer["limits"]["google.com/tpu"] = str(job.tpu.chips)
    trainer["requests"]["google.com/tpu"] = str(job.tpu.chips)
  out = [Role(CHIEF, 1, TRAINER_PORT, trainer, True)]
  if job.workers > 1:
    out.append(Role(WORKER, job.workers - 1, TRAINER_PORT, trainer, True))
  if job.data_service_workers:
    service = _resources(job.data_service_cpu, job.data_service_memory)
    out.append(Role(DISPATCHER, 1, DISPATCHER_PORT, service, False))
    out.append(
      Role(
        DATA_WORKER, job.data_service_workers, DATA_WORKER_PORT, service, False
      )
    )
  return out


def _resources(cpu, memory):
  # Memory limit = request: a pod over it is killed, not the node's others.
  return {
    "requests": {"cpu": cpu, "memory": memory},
    "limits": {"memory": memory},
  }


def host_pattern(job: Job) -> str:
  """A pod's DNS name, {role} and {index} to fill: the JobSet controller's
  `<jobset>-<replicatedJob>-<jobIndex>-<podIndex>.<subdomain>` (one Job per
  role, so jobIndex 0), or an Indexed Job's `<job>-<index>.<service>`."""
  if job.format == "jobset":
    return f"{job.name}-{{role}}-0-{{index}}.{job.name}"
  return f"{job.name}-{{role}}-{{index}}.{job.name}"


def cluster_layout(job: Job) -> str:
  """ALEXNET_CLUSTER: role=pods:port, comma-separated."""
  return ",".join(f"{r.name}={r.pods}:{r.port}" for r in roles(job))


def manifests(job: Job) -> list[dict[str, Any]]:
  """The objects to apply, in order."""
  if job.format == "jobset":
    return [jobset(job)]
  return [headless_service(job)] + [
    {
      "apiVersion": "batch/v1",
      "kind": "Job",
      "metadata": _metadata(job, f"{job.name}-{role.name}"),
      "spec": job_spec(job, role, indexed_job=True),
    }
    for role in roles(job)
  ]


def _labels(job: Job) -> dict[str, str]:
  labels = {APP_LABEL: "alexnet-tf", RUN_LABEL: job.name}
  if job.format != "jobset":
    # --delete's selector: never a JobSet's own child Jobs.
    labels[FORMAT_LABEL] = job.format
  return labels


def _metadata(job: Job, name: str) -> dict[str, Any]:
  labels = _labels(job)
  if job.queue:  # The workload Kueue admits: the JobSet, as one.
    labels[QUEUE_LABEL] = job.queue
  return {"name": name, "namespace": job.namespace, "labels": labels}


def jobset(job: Job) -> dict[str, Any]:
  trainers = [r.name for r in roles(job) if r.name in (CHIEF, WORKER)]
  return {
    "apiVersion": "jobset.x-k8s.io/v1alpha2",
    "kind": "JobSet",
    "metadata": _metadata(job, job.name),
    "spec": {
      # The controller makes the headless Service: stable pod DNS names.
      "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
      # Done when the trainers are; the data service never ends by itself.
      "successPolicy": {"operator": "All", "targetReplicatedJobs": trainers},
      "failurePolicy": {
        "maxRestarts": job.max_restarts,
        "rules": [
          {
            # A preempted trainer (exit 75, or evicted) restarts the whole
            # set from its checkpoint, not counted against maxRestarts.
            "name": "preempted",
            "action": "RestartJobSetAndIgnoreMaxRestarts",
            "onJobFailureReasons": ["PodFailurePolicy"],
          }
        ],
      },
      "ttlSecondsAfterFinished": job.ttl_secs,
      "replicatedJobs": [
        {
          "name": role.name,
          "replicas": 1,
          "template": {
            "metadata": {"labels": _labels(job)},
            "spec": job_spec(job, role, indexed_job=False),
          },
        }
        for role in roles(job)
      ],
    },
  }


def headless_service(job: Job) -> dict[str, Any]:
  ports = sorted({r.port for r in roles(job)})
  return {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": _metadata(job, job.name),
    "spec": {
      "clusterIP": "None",
      "selector": {RUN_LABEL: job.name},
      "publishNotReadyAddresses": True,
      "ports": [{"name": f"p{port}", "port": port} for port in ports],
    },
  }


def job_spec(job: Job, role: Role, indexed_job: bool) -> dict[str, Any]:
  """One role's Job: Indexed, one pod per index, failing at the first pod
  failure (the JobSet restarts the set) except that a preempted pod exits
  75 and restarts without counting."""
  if indexed_job:
    # Without a JobSet each Job restarts its own pods: a preempted one
    # restarts uncounted, any other failure counts against the limit.
    on_preempted, backoff = "Ignore", job.max_restarts
  else:
    on_preempted, backoff = "FailJob", 0
  spec: dict[str, Any] = {
    "completionMode": "Indexed",
    "completions": role.pods,
    "parallelism": role.pods,
    "backoffLimit": backoff,
    "podFailurePolicy": {
      "rules": [
        {
          "action": on_preempted,
          "onExitCodes": {
            "containerName": CONTAINER,
            "operator": "In",
            "values": [PREEMPTED_EXIT_CODE],
          },
        },
        {
          "action": on_preempted,
          "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
        },
      ]
    },
    "template": {
      "metadata": {"labels": _labels(job)},
      "spec": pod_spec(job, role, subdomain=job.name if indexed_job else ""),
    },
  }
  if indexed_job:
    spec["ttlSecondsAfterFinished"] = job.ttl_secs
  return spec


def pod_spec(job: Job, role: Role, subdomain: str = "") -> dict[str, Any]:
  container = {
    "name": CONTAINER,
    "image": job.image,
    "command": ["python", "-m", "launch.k8s_pod"],
    "args": ["--", *job.trainer_args] if role.name in (CHIEF, WORKER) else [],
    "env": pod_env(job, role),
    "ports": [{"containerPort": role.port}],
    "resources": role.resources,
  }
  spec: dict[str, Any] = {
    "restartPolicy": "Never",
    # The pause container is PID 1: SIGTERM then reaches the trainer and
    # the data service with its default action (PID 1 would ignore it).
    "shareProcessNamespace": True,
    # SIGTERM first: the trainer checkpoints and exits 75 within this.
    "terminationGracePeriodSeconds": job.grace_secs,
    "containers": [container],
  }
  if job.volumes:
    spec["volumes"] = [
      {"name": f"volume-{i}", "persistentVolumeClaim": {"claimName": claim}}
      for i, (claim, _) in enumerate(job.volumes)
    ]
    container["volumeMounts"] = [
      {"name": f"volume-{i}", "mountPath": path}
      for i, (_, path) in enumerate(job.volumes)
    ]
  if subdomain:
    spec["subdomain"] = subdomain
  if job.service_account:
    spec["serviceAccountName"] = job.service_account
  if role.accelerated and job.gpu:
    spec["nodeSelector"] = {"cloud.google.com/gke-accelerator": job.gpu}
  if role.accelerated and job.tpu:
    spec["nodeSelector"] = {
      "cloud.google.com/gke-tpu-accelerator": job.tpu.accelerator,
      "cloud.google.com/gke-tpu-topology": job.tpu.topology,
    }
  return spec


def pod_env(job: Job, role: Role) -> list[dict[str, str]]:
  return [
    {"name": ENV_ROLE, "value": role.name},
    {"name": ENV_CLUSTER, "value": cluster_layout(job)},
    {"name": ENV_HOST_PATTERN, "value": host_pattern(job)},
    {"name": "PYTHONUNBUFFERED", "value": "1"},
  ]


def address(job: Job, role: str, index: int = 0) -> str:
  """HOST:PORT of a role's pod."""
  port = {r.name: r.port for r in roles(job)}[role]
  return f"{host_pattern(job).format(role=role, index=index)}:{port}"


def implied_trainer_args(
  args: Sequence[str],
  given: frozenset,
  strategy: str,
  workers: int,
  accelerator_kind: str,
  data_service: bool,
  tpu_flag_given: bool,
  dispatcher_address: str,
) -> list[str]:
  """`args` plus the flags the shape implies: multi_worker across trainer
  pods, the TPU on its host, the job's tf.data service, and
  --require_accelerator on GPU and TPU pods unless given."""
  out = list(args)
  if strategy == "auto":
    if accelerator_kind == "tpu":
      out.append("--strategy=tpu")
    elif workers > 1:
      out.append("--strategy=multi_worker")
  if accelerator_kind == "tpu" and not tpu_flag_given:
    out.append("--tpu=local")
  if data_service:
    out.append(f"--data_service=grpc://{dispatcher_address}")
  if accelerator_kind != "none" and "require_accelerator" not in given:
    out.append(f"--require_accelerator={accelerator_kind}")
  return out
