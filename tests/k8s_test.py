"""launch.k8s's manifests against the official schemas: the JobSet with the
CRD schema of JobSet v0.12.0 (tests/schemas, jsonschema) and every core
object - the Indexed Jobs and Service, and each JobSet's job template as a
Job - with kubernetes-validate at Kubernetes 1.33, strictly (an unknown
field is an error, as kubectl's and the API server's strict field
validation make it). Negative controls: a misspelt field and a wrong type
fail. And the pods' TF_CONFIG, built from what Kubernetes gives each pod."""

import copy
import json
import os

import jsonschema
import kubernetes_validate
import pytest

from launch import k8s
from launch import k8s_manifests
from launch import k8s_pod
from launch import platforms

SCHEMA = os.path.join(
  os.path.dirname(__file__),
  "schemas",
  f"jobset-{platforms.JOBSET_VERSION}-v1alpha2.json",
)
TRAINER = [
  "--config=cats_vs_dogs",
  "--train_data=gs://b/data/train-*",
  "--model_dir=gs://b/runs/1",
]
IMAGE = "us-central1-docker.pkg.dev/p/alexnet/alexnet-tf:0123456789abcdef"


def _strict(node):
  """The CRD schema with unknown fields refused: the API server prunes
  them from a CRD object, and kubectl's strict field validation rejects
  them; jsonschema alone would let a misspelling through."""
  if isinstance(node, list):
    return [_strict(n) for n in node]
  if not isinstance(node, dict):
    return node
  out = {k: _strict(v) for k, v in node.items()}
  if (
    "properties" in out
    and "additionalProperties" not in out
    and not out.get("x-kubernetes-preserve-unknown-fields")
  ):
    out["additionalProperties"] = False
  return out


with open(SCHEMA) as f:
  JOBSET_SCHEMA = _strict(json.load(f)["openAPIV3Schema"])


def validate_jobset(obj):
  jsonschema.validate(obj, JOBSET_SCHEMA)
  # The job templates inside are batch/v1 Jobs: the core schema checks
  # them in full.
  for replicated in obj["spec"]["replicatedJobs"]:
    validate_core(
      {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"{obj['metadata']['name']}-{replicated['name']}"},
        "spec": replicated["template"]["spec"],
      }
    )


def validate_core(obj):
  kubernetes_validate.validate(obj, platforms.KUBERNETES_VERSION, strict=True)


def _manifests(**changes):
  options = k8s.default_options(name="run1", image=IMAGE, **changes)
  return k8s_manifests.manifests(k8s.build_job(options, TRAINER))


SHAPES = {
  "cpu": {},
  "gpu, 2 workers, data service": dict(
    workers=2, accelerator="nvidia-l4", gpus=2, data_service_workers=2
  ),
  "tpu": dict(accelerator="tpu-v5-lite-podslice", tpu_topology="2x4"),
  "queue, identity, volume": dict(
    workers=3,
    queue="team-a",
    service_account="trainer-ksa",
    volume=["shared:/mnt/shared"],
  ),  # fmt: skip
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_jobset_is_valid(shape):
  (jobset,) = _manifests(**SHAPES[shape])
  validate_jobset(jobset)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_indexed_job_and_service_is_valid(shape):
  # The JobSet-only options left out (their refusal is tested below).
  changes = {
    k: v
    for k, v in SHAPES[shape].items()
    if k not in ("queue", "data_service_workers")
  }
  objects = _manifests(format="indexed-job", **changes)
  assert [o["kind"] for o in objects][:2] == ["Service", "Job"]
  for obj in objects:
    validate_core(obj)


def test_a_misspelt_field_or_a_wrong_type_fails_both_validators():
  (jobset,) = _manifests(workers=2)
  misspelt = copy.deepcopy(jobset)
  misspelt["spec"]["replicatedJob"] = misspelt["spec"].pop("replicatedJobs")
  with pytest.raises(jsonschema.ValidationError, match="replicatedJob"):
    validate_jobset(misspelt)
  wrong_type = copy.deepcopy(jobset)
  wrong_type["spec"]["replicatedJobs"][0]["replicas"] = "1"
  with pytest.raises(jsonschema.ValidationError, match="'1' is not of type"):
    validate_jobset(wrong_type)
  inner = copy.deepcopy(jobset)
  inner["spec"]["replicatedJobs"][0]["template"]["spec"]["completionsMode"] = (
    "Indexed"
  )
  with pytest.raises(jsonschema.ValidationError, match="completionsMode"):
    jsonschema.validate(inner, JOBSET_SCHEMA)
  with pytest.raises(kubernetes_validate.ValidationError):
    validate_core(
      {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "x"},
        "spec": inner["spec"]["replicatedJobs"][0]["template"]["spec"],
      }
    )
  service, job, *_ = _manifests(format="indexed-job")
  job = copy.deepcopy(job)
  job["spec"]["parallelism"] = "one"
  with pytest.raises(kubernetes_validate.ValidationError):
    validate_core(job)
  service = copy.deepcopy(service)
  service["spec"]["clusterIp"] = "None"
  with pytest.raises(kubernetes_validate.ValidationError):
    validate_core(service)


def test_the_manifest_asks_for_what_the_shape_needs():
  (jobset,) = _manifests(
    workers=2, accelerator="nvidia-l4", gpus=2, data_service_workers=2,
    queue="team-a", service_account="trainer-ksa", max_restarts=5,
  )  # fmt: skip
  spec = jobset["spec"]
  assert jobset["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
  # Kueue admits the JobSet as one workload: its children carry no queue.
  assert "kueue" not in json.dumps(jobset["spec"])
  assert [r["name"] for r in spec["replicatedJobs"]] == [
    "chief", "worker", "dispatcher", "data-worker",
  ]  # fmt: skip
  assert spec["successPolicy"]["targetReplicatedJobs"] == ["chief", "worker"]
  assert spec["failurePolicy"]["maxRestarts"] == 5
  pods = {
    r["name"]: r["template"]["spec"]["template"]["spec"]
    for r in spec["replicatedJobs"]
  }
  chief = pods["chief"]["containers"][0]
  assert chief["resources"]["limits"]["nvidia.com/gpu"] == "2"
  assert pods["chief"]["nodeSelector"] == {
    "cloud.google.com/gke-accelerator": "nvidia-l4"
  }
  assert pods["chief"]["serviceAccountName"] == "trainer-ksa"
  assert "nodeSelector" not in pods["dispatcher"]
  # SIGTERM reaches the trainer: it is not PID 1.
  assert all(p["shareProcessNamespace"] for p in pods.values())
  assert chief["args"][-3:] == [
    "--strategy=multi_worker",
    "--data_service=grpc://run1-dispatcher-0-0.run1:5050",
    "--require_accelerator=gpu",
  ]
  (tpu,) = _manifests(accelerator="tpu-v5-lite-podslice", tpu_topology="2x4")
  pod = tpu["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
  assert pod["nodeSelector"] == {
    "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
    "cloud.google.com/gke-tpu-topology": "2x4",
  }
  assert pod["containers"][0]["resources"]["limits"]["google.com/tpu"] == "8"
  assert pod["containers"][0]["args"][-3:] == [
    "--strategy=tpu", "--tpu=local", "--require_accelerator=tpu",
  ]  # fmt: skip


@pytest.mark.parametrize(
  "changes,trainer,fragment",
  [
    ({}, ["--epocs=3"], "Unknown command line flag 'epocs'"),
    (dict(name="Run_1"), [], "--name='Run_1'"),
    (dict(workers=2), ["--strategy=mirrored"], "contradicts"),
    (dict(accelerator="nvidia-k9"), [], "--accelerator=nvidia-k9: not one of"),
    (
      dict(accelerator="tpu-v5-lite-podslice", tpu_topology="4x4"),
      [],
      "multi-host slice from one client process",
    ),
    (
      dict(accelerator="tpu-v5-lite-podslice", tpu_topology="2x2", workers=2),
      [],
      "a slice is one trainer",
    ),
    ({}, ["--require_accelerator=gpu"], "the pods have no GPU"),
    ({}, ["--model_dir=runs/1"], "pods keep nothing"),
    (dict(volume=["shared:/mnt/a"]), ["--model_dir=/mnt/b/run"], "pods keep"),
    (dict(volume=["shared"]), [], "--volume='shared': expected CLAIM:/mount"),
    ({}, ["--train_data=/data/train-*"], "is a local path"),
    (
      dict(format="indexed-job", queue="q"),
      [],
      "--queue needs --format=jobset",
    ),
    (
      dict(format="indexed-job", data_service_workers=1),
      [],
      "--data_service_workers needs --format=jobset",
    ),
    (dict(max_restarts=-1), [], "--max_restarts must be >= 0"),
    (
      dict(name="a" * 40, data_service_workers=101),
      [],
      "its pods' names would reach 64 characters",
    ),
  ],
)
def test_bad_flags_are_one_line(changes, trainer, fragment):
  options = k8s.default_options(**{"name": "run1", "image": IMAGE, **changes})
  with pytest.raises(k8s.LaunchError) as raised:
    k8s.build_job(options, TRAINER + trainer)
  assert fragment in str(raised.value)
  assert "\n" not in str(raised.value)


def _pod_env(obj, role_name):
  """The environment a pod of `role_name` gets: the manifest's, plus the
  index Kubernetes sets in an Indexed Job."""
  for replicated in obj["spec"]["replicatedJobs"]:
    if replicated["name"] == role_name:
      container = replicated["template"]["spec"]["template"]["spec"][
        "containers"
      ][0]
      return {e["name"]: e["value"] for e in container["env"]}
  raise KeyError(role_name)


def test_each_pod_builds_its_tf_config_from_its_index():
  (jobset,) = _manifests(workers=3)
  configs = []
  for role, index in (("chief", 0), ("worker", 0), ("worker", 1)):
    env = {**_pod_env(jobset, role), "JOB_COMPLETION_INDEX": str(index)}
    command, extra = k8s_pod.Pod(env).command(["--epochs=1"])
    assert command[1:4] == ["-m", "trainer.task", "--epochs=1"]
    configs.append(json.loads(extra["TF_CONFIG"]))
  cluster = {
    "chief": ["run1-chief-0-0.run1:2222"],
    "worker": ["run1-worker-0-0.run1:2222", "run1-worker-0-1.run1:2222"],
  }
  assert [c["cluster"] for c in configs] == [cluster] * 3
  assert [c["task"] for c in configs] == [
    {"type": "chief", "index": 0},
    {"type": "worker", "index": 0},
    {"type": "worker", "index": 1},
  ]
  # One trainer: no TF_CONFIG (a single machine).
  (single,) = _manifests()
  env = {**_pod_env(single, "chief"), "JOB_COMPLETION_INDEX": "0"}
  assert k8s_pod.Pod(env).command([])[1] == {}
  # The Indexed Job form names pods <job>-<index>.<service>.
  service, chief, worker = _manifests(workers=2, format="indexed-job")
  env = {
    e["name"]: e["value"]
    for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]
  }
  config = json.loads(
    k8s_pod.Pod({**env, "JOB_COMPLETION_INDEX": "0"}).command([])[1][
      "TF_CONFIG"
    ]
  )
  assert config["cluster"]["worker"] == ["run1-worker-0.run1:2222"]
  assert (
    chief["spec"]["template"]["spec"]["subdomain"]
    == service["metadata"]["name"]
  )


def test_data_service_pods_serve_at_their_dns_names():
  (jobset,) = _manifests(data_service_workers=2)
  env = {**_pod_env(jobset, "data-worker"), "JOB_COMPLETION_INDEX": "1"}
  command, _ = k8s_pod.Pod(env).command([])
  assert command[2:] == [
    "trainer.data_service",
    "--role=worker",
    "--dispatcher=run1-dispatcher-0-0.run1:5050",
    "--port=5051",
    "--host=run1-data-worker-0-1.run1",
  ]
  with pytest.raises(ValueError, match="JOB_COMPLETION_INDEX not set"):
    k8s_pod.Pod({k: v for k, v in env.items() if k != "JOB_COMPLETION_INDEX"})


def test_without_an_image_or_project_a_written_manifest_names_project():
  """A manifest to read (--dry_run, --out) names this package's image in a
  project called PROJECT; one to apply needs --image or --project."""
  options = k8s.default_options(name="run1")
  job = k8s.build_job(options, TRAINER, writes_only=True)
  assert job.image.startswith(
    "us-central1-docker.pkg.dev/PROJECT/alexnet/alexnet-tf:"
  )
  with pytest.raises(k8s.LaunchError, match="--image=URI or --project"):
    k8s.build_job(options, TRAINER)
