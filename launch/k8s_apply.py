"""launch.k8s's calls to a cluster, with the official kubernetes client:
create the job's objects (after building its image, if it is this
package's), or delete them. The client reads ~/.kube/config or $KUBECONFIG
(`gcloud container clusters get-credentials CLUSTER` writes it)."""

from __future__ import annotations

from typing import Any

from launch import k8s_manifests
from launch.vertex_checks import LaunchError

JOBSET_GROUP, JOBSET_VERSION, JOBSET_PLURAL = (
  "jobset.x-k8s.io",
  "v1alpha2",
  "jobsets",
)
JOBSET_INSTALL = (
  "kubectl apply --server-side -f https://github.com/kubernetes-sigs/jobset/"
  "releases/download/{version}/manifests.yaml"
)
# GKE nodes pull images as their service account: the Compute Engine
# default one unless the node pool names another.
GKE_NODE_ACCOUNT = "{number}-compute@developer.gserviceaccount.com"


def _clients(options):
  try:
    from kubernetes import client
    from kubernetes import config
  except ImportError:
    raise LaunchError(
      "--apply and --delete need the kubernetes client: pip install -e '.[k8s]'"
    ) from None
  try:
    config.load_kube_config(context=options["context"] or None)
  except Exception as e:  # No kubeconfig, or no such context.
    raise LaunchError(
      f"no cluster to talk to ({type(e).__name__}: {e}); run gcloud "
      "container clusters get-credentials CLUSTER --region=REGION first"
    ) from None
  return client


def _ensure_image(options, job):
  """This package's image in Artifact Registry (built if missing)."""
  from launch import cloud_build
  from launch import image_build

  if not options["staging_bucket"].startswith("gs://"):
    raise LaunchError(
      "--staging_bucket=gs://... is required to build the image (its "
      "build context goes there); or pass --image"
    )
  build = image_build.plan(options, tpu=job.tpu is not None)
  build_options = {
    **options,
    "api_endpoint": "",
    "create_repository": False,
    "skip_permission_check": False,
    "build_service_account": "",
    "no_wait": False,
    "tune": False,
    "pull_account": GKE_NODE_ACCOUNT,
  }
  cloud_build.ensure_image(build_options, build, {}, poll_secs=15)


def apply(options: dict[str, Any], job, objects) -> None:
  """Creates `objects` in the cluster and says how to follow the job.

  Raises:
    LaunchError: one line (exists already, no JobSet controller, no such
      namespace, no cluster).
  """
  client = _clients(options)  # Before a build: a cluster to submit to.
  if not options["image"]:
    _ensure_image(options, job)
  from kubernetes.client.rest import ApiException

  namespace = job.namespace
  # Jobs first: the headless Service of the Indexed-Job form is then owned
  # by the chief's Job, and deleted with it (its TTL included).
  ordered = sorted(objects, key=lambda o: o["kind"] == "Service")
  chief = None
  try:
    for obj in ordered:
      kind = obj["kind"]
      if kind == "JobSet":
        client.CustomObjectsApi().create_namespaced_custom_object(
          JOBSET_GROUP,
          JOBSET_VERSION,
          namespace,
          JOBSET_PLURAL,
          obj,
          field_validation="Strict",
        )
      elif kind == "Job":
        created = client.BatchV1Api().create_namespaced_job(
          namespace, obj, field_validation="Strict"
        )
        if obj["metadata"]["name"].endswith(f"-{k8s_manifests.CHIEF}"):
          chief = created
      else:
        if chief is not None:
          obj = _owned_by(obj, chief)
        client.CoreV1Api().create_namespaced_service(
          namespace, obj, field_validation="Strict"
        )
      print(f"Created {kind} {namespace}/{obj['metadata']['name']}", flush=True)
  except ApiException as e:
    raise LaunchError(_api_error(e, job)) from None
  except (OSError, _url_errors()) as e:
    raise LaunchError(_unreachable(e)) from None
  selector = (
    f"jobset.sigs.k8s.io/jobset-name={job.name},"
    f"jobset.sigs.k8s.io/replicatedjob-name={k8s_manifests.CHIEF}"
    if job.format == "jobset"
    else f"job-name={job.name}-{k8s_manifests.CHIEF}"
  )
  print(f"Submitted {job.name}. Follow the chief:", flush=True)
  print(f"  kubectl logs -f -n {namespace} -l {selector}", flush=True)
  print(
    f"Delete it: python -m launch.k8s --delete={job.name} "
    f"--namespace={namespace} --format={job.format}",
    flush=True,
  )


def _owned_by(obj, job):
  owner = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "name": job.metadata.name,
    "uid": job.metadata.uid,
  }
  return {**obj, "metadata": {**obj["metadata"], "ownerReferences": [owner]}}


def _url_errors():
  import urllib3

  return urllib3.exceptions.HTTPError


def _unreachable(error):
  return (
    f"cannot reach the cluster ({type(error).__name__}: {error}); check "
    "kubectl config current-context"
  )


def _api_error(error, job):
  import json

  try:
    details = json.loads(error.body or "{}").get("details") or {}
  except ValueError:
    details = {}
  if error.status == 404 and details.get("kind") == "namespaces":
    return (
      f"namespace {job.namespace} does not exist: kubectl create namespace "
      f"{job.namespace}, or pass another --namespace"
    )
  if error.status == 409:
    return (
      f"{job.name} already exists in namespace {job.namespace}: pick another "
      f"--name, or python -m launch.k8s --delete={job.name}"
    )
  if error.status == 404 and job.format == "jobset":
    from launch import platforms

    return (
      "the cluster has no JobSet API (jobset.x-k8s.io): install the "
      f"controller ({JOBSET_INSTALL.format(version=platforms.JOBSET_VERSION)})"
      " or use --format=indexed-job"
    )
  return f"the cluster refused it ({error.status} {error.reason}): {error.body}"


def delete(options: dict[str, Any], name: str) -> None:
  """Deletes the job `name` (its pods with it)."""
  client = _clients(options)
  from kubernetes.client.rest import ApiException

  namespace = options["namespace"]
  body = client.V1DeleteOptions(propagation_policy="Foreground")
  try:
    if options["format"] == "jobset":
      client.CustomObjectsApi().delete_namespaced_custom_object(
        JOBSET_GROUP, JOBSET_VERSION, namespace, JOBSET_PLURAL, name, body=body
      )
    else:
      jobs = client.BatchV1Api()
      selector = (
        f"{k8s_manifests.RUN_LABEL}={name},"
        f"{k8s_manifests.FORMAT_LABEL}=indexed-job"
      )
      if not jobs.list_namespaced_job(namespace, label_selector=selector).items:
        raise LaunchError(f"no indexed-job {name} in namespace {namespace}")
      jobs.delete_collection_namespaced_job(
        namespace, label_selector=selector, propagation_policy="Foreground"
      )
  except ApiException as e:
    if e.status == 404:
      raise LaunchError(
        f"no {options['format']} {name} in namespace {namespace}"
      ) from None
    raise LaunchError(f"the cluster refused ({e.status} {e.reason})") from None
  except (OSError, _url_errors()) as e:
    raise LaunchError(_unreachable(e)) from None
  print(f"Deleted {name} from namespace {namespace}", flush=True)
