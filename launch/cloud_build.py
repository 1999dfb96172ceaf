"""The image's trip through Google Cloud, with the official clients: the
preflight (APIs enabled, the Artifact Registry repository, who may push and
pull), reuse of an image Artifact Registry already has, and a Cloud Build of
one it has not, followed to its end.

Every problem is a LaunchError: one line naming the `gcloud` command that
fixes it. The clients are imported only here, only when called; an http://
--api_endpoint (a local stand-in) serves every API without credentials.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from typing import Any

from launch import image_build
from launch.vertex_checks import LaunchError

CLOUD_BUILD_API = "cloudbuild.googleapis.com"
ARTIFACT_REGISTRY_API = "artifactregistry.googleapis.com"
API_NAMES = {
  CLOUD_BUILD_API: "Cloud Build",
  ARTIFACT_REGISTRY_API: "Artifact Registry",
}
# Roles whose permissions include pushing to (or pulling from) a Docker
# repository, granted on the repository or the project. Grants on a folder
# or organisation are not seen here: --skip_permission_check.
PUSH_ROLES = {
  "roles/artifactregistry.writer",
  "roles/artifactregistry.repoAdmin",
  "roles/artifactregistry.admin",
  "roles/artifactregistry.createOnPushWriter",
  "roles/artifactregistry.createOnPushRepoAdmin",
  "roles/cloudbuild.builds.builder",  # The legacy Cloud Build account's.
  "roles/editor",
  "roles/owner",
}
PULL_ROLES = PUSH_ROLES | {
  "roles/artifactregistry.reader",
  # Vertex AI's Custom Code Service Agent has it in its own project.
  "roles/aiplatform.customCodeServiceAgent",
}
SUBMIT_ROLES = {
  "roles/aiplatform.user",
  "roles/aiplatform.admin",
  "roles/editor",
  "roles/owner",
}
TERMINAL_BUILD_STATES = {
  "SUCCESS",
  "FAILURE",
  "INTERNAL_ERROR",
  "TIMEOUT",
  "CANCELLED",
  "EXPIRED",
}


def _client(module_client, options: dict[str, Any]):
  """A client of `module_client` (a class) for `options`' endpoint."""
  endpoint = options["api_endpoint"]
  if endpoint.startswith("http://"):
    from google.auth.credentials import AnonymousCredentials

    return module_client(
      credentials=AnonymousCredentials(),
      transport="rest",
      client_options={"api_endpoint": endpoint},
    )
  return module_client()


def _registry(options):
  from google.cloud import artifactregistry_v1

  return _client(artifactregistry_v1.ArtifactRegistryClient, options)


def _repository_name(options):
  return (
    f"projects/{options['project']}/locations/{options['region']}/"
    f"repositories/{options['repository']}"
  )


def find_image(options: dict[str, Any], build: image_build.ImageBuild) -> bool:
  """Whether Artifact Registry already has the image's tag."""
  from google.api_core import exceptions

  name = f"{_repository_name(options)}/packages/{build.name}/tags/{build.tag}"
  try:
    _registry(options).get_tag(name=name)
  except exceptions.NotFound:
    return False
  return True


def preflight(
  options: dict[str, Any], needs_build: bool, submits_job: bool
) -> None:
  """What the build and the job need beyond the registry (check_registry):
  the Cloud Build API when building, and the accounts' roles.

  Raises:
    LaunchError: one line naming the gcloud command that fixes it.
  """
  project = options["project"]
  if needs_build:
    _check_apis(options, [CLOUD_BUILD_API])
  if options["skip_permission_check"]:
    return
  number = _project_number(options)
  bindings = _bindings(options)
  if bindings is None:
    return
  # Who pulls the image: Vertex AI's service agent, or (launch.k8s) the
  # cluster nodes' account.
  puller = (
    options.get("pull_account")
    or "service-{number}@gcp-sa-aiplatform-cc.iam.gserviceaccount.com"
  ).format(number=number)
  if not any(f"serviceAccount:{puller}" in m for m in bindings.values()):
    # Vertex AI creates its agent (and grants its role) with a project's
    # first job: nothing to judge yet.
    print(
      f"Note: {puller} has no role in project {project} yet; if the job "
      "cannot pull the image, grant it roles/artifactregistry.reader",
      flush=True,
    )
  elif not _granted(bindings, [puller], PULL_ROLES):
    raise LaunchError(_grant_line(options, puller, "reader", "pull"))
  if not needs_build:
    return
  builders = (
    [options["build_service_account"]]
    if options["build_service_account"]
    # New projects' builds run as the Compute Engine default account,
    # older ones' as the legacy Cloud Build account.
    else [
      f"{number}-compute@developer.gserviceaccount.com",
      f"{number}@cloudbuild.gserviceaccount.com",
    ]
  )
  if not _granted(bindings, builders, PUSH_ROLES):
    raise LaunchError(_grant_line(options, builders[0], "writer", "push"))
  if submits_job and not _granted(bindings, builders, SUBMIT_ROLES):
    raise LaunchError(
      f"--no_wait: the build's account {builders[0]} cannot create Vertex AI "
      f"jobs: gcloud projects add-iam-policy-binding {project} "
      f"--member=serviceAccount:{builders[0]} --role=roles/aiplatform.user"
    )


def check_registry(options: dict[str, Any]):
  """The Artifact Registry API enabled and the Docker repository present
  (created with --create_repository, never unasked). Returns it.

  Raises:
    LaunchError: one line naming the gcloud command that fixes it.
  """
  from google.cloud import artifactregistry_v1

  _check_apis(options, [ARTIFACT_REGISTRY_API])
  repository = _check_repository(options)
  if repository.format_ != artifactregistry_v1.Repository.Format.DOCKER:
    raise LaunchError(
      f"--repository={options['repository']} holds "
      f"{artifactregistry_v1.Repository.Format(repository.format_).name} "
      "packages, not Docker images: name a Docker repository"
    )
  return repository


@contextlib.contextmanager
def _one_line(doing: str):
  """A Google API's refusal while `doing`, as one LaunchError line."""
  from google.api_core import exceptions

  try:
    yield
  except exceptions.GoogleAPICallError as e:
    hint = (
      " (the roles this needs: Permissions in the Vertex AI docs)"
      if e.code == 403
      else ""
    )
    # REST errors begin "GET https://...: "; the rest is the reason.
    message = re.sub(r"^[A-Z]+ \S+: ", "", " ".join(str(e.message).split()))
    message = message[:200]
    raise LaunchError(f"{doing}: {e.code} {message}{hint}") from None


def _check_apis(options, apis):
  from google.cloud import service_usage_v1

  client = _client(service_usage_v1.ServiceUsageClient, options)
  project = options["project"]
  for api in apis:
    service = client.get_service(
      request={"name": f"projects/{project}/services/{api}"}
    )
    if service.state != service_usage_v1.State.ENABLED:
      raise LaunchError(
        f"the {API_NAMES[api]} API is not enabled in project {project}: "
        f"gcloud services enable {api} --project={project}"
      )


def _check_repository(options):
  from google.api_core import exceptions
  from google.cloud import artifactregistry_v1

  client = _registry(options)
  name = _repository_name(options)
  try:
    return client.get_repository(name=name)
  except exceptions.NotFound:
    pass
  repository, region, project = (
    options["repository"],
    options["region"],
    options["project"],
  )
  if not options["create_repository"]:
    raise LaunchError(
      f"--repository={repository}: no Artifact Registry repository "
      f"{repository} in {region}: gcloud artifacts repositories create "
      f"{repository} --repository-format=docker --location={region} "
      f"--project={project} (or pass --create_repository)"
    )
  print(f"Creating the Artifact Registry repository {name}", flush=True)
  operation = client.create_repository(
    parent=f"projects/{project}/locations/{region}",
    repository_id=repository,
    repository=artifactregistry_v1.Repository(
      format_=artifactregistry_v1.Repository.Format.DOCKER,
      description="Training images of alexnet-tf, tagged by content.",
    ),
  )
  return operation.result(timeout=300)


def _project_number(options):
  from google.cloud import resourcemanager_v3

  client = _client(resourcemanager_v3.ProjectsClient, options)
  project = client.get_project(name=f"projects/{options['project']}")
  return project.name.split("/")[-1]


def _bindings(options):
  """{role: members} granted on the repository or the project; None when
  the policies cannot be read (said in a line: the check is skipped)."""
  from google.api_core import exceptions
  from google.cloud import resourcemanager_v3

  try:
    policies = [
      _registry(options).get_iam_policy(
        request={"resource": _repository_name(options)}
      ),
      _client(resourcemanager_v3.ProjectsClient, options).get_iam_policy(
        request={"resource": f"projects/{options['project']}"}
      ),
    ]
  except (exceptions.PermissionDenied, exceptions.Forbidden):
    print(
      "Note: cannot read the repository's and the project's IAM policies: "
      "who may push and pull is not checked",
      flush=True,
    )
    return None
  granted: dict[str, set[str]] = {}
  for policy in policies:
    for binding in policy.bindings:
      if binding.condition.expression:
        continue  # Conditional: cannot be judged here.
      granted.setdefault(binding.role, set()).update(binding.members)
  return granted


def _granted(bindings, accounts, roles):
  members = {f"serviceAccount:{a}" for a in accounts}
  return any(members & bindings.get(role, set()) for role in roles)


def _grant_line(options, account, role, verb):
  return (
    f"{account} cannot {verb} images in --repository="
    f"{options['repository']}: gcloud artifacts repositories "
    f"add-iam-policy-binding {options['repository']} "
    f"--location={options['region']} --project={options['project']} "
    f"--member=serviceAccount:{account} --role=roles/artifactregistry.{role}"
    " (granted on a folder or organisation? --skip_permission_check)"
  )


def start_build(
  options: dict[str, Any],
  build: image_build.ImageBuild,
  request: dict[str, Any],
) -> tuple[str, str]:
  """Uploads the context and starts the build. Returns (build resource
  name, log URL)."""
  from google.cloud.devtools import cloudbuild_v1

  from launch import vertex_submit

  with tempfile.TemporaryDirectory() as scratch:
    tarball = os.path.join(scratch, "context.tar.gz")
    image_build.write_context(build, tarball)
    print(f"Uploading the build context to {build.context_uri}", flush=True)
    vertex_submit.upload(tarball, build.context_uri, options["project"])
  client = _client(cloudbuild_v1.CloudBuildClient, options)
  # parent only (no project_id): the build runs in --region, not global.
  operation = client.create_build(
    parent=f"projects/{options['project']}/locations/{options['region']}",
    build=cloudbuild_v1.Build.from_json(_json(request)),
  )
  started = operation.metadata.build
  name = (
    f"projects/{options['project']}/locations/{options['region']}/builds/"
    f"{started.id}"
  )
  return name, started.log_url


def wait_for_build(
  options: dict[str, Any], name: str, log_url: str, poll_secs: float
) -> None:
  """Follows the build, printing each new status, until it ends.

  Raises:
    LaunchError: the build did not succeed (names its logs).
  """
  from google.cloud.devtools import cloudbuild_v1

  client = _client(cloudbuild_v1.CloudBuildClient, options)
  last = None
  started = time.time()
  while True:
    build = client.get_build(name=name)
    status = cloudbuild_v1.Build.Status(build.status).name
    if status != last:
      print(
        f"Build {status.lower()} after {time.time() - started:.0f} s",
        flush=True,
      )
      last = status
    if status in TERMINAL_BUILD_STATES:
      break
    time.sleep(poll_secs)
  if status != "SUCCESS":
    detail = f" ({build.status_detail})" if build.status_detail else ""
    raise LaunchError(
      f"the image build ended {status}{detail}; nothing was submitted. "
      f"Its log: {log_url}"
    )


def _json(request):
  import json

  return json.dumps(request)


def vertex_url(options: dict[str, Any]) -> str:
  """Where a job request is posted (the collection of --tune or not)."""
  endpoint = options["api_endpoint"] or (
    f"https://{options['region']}-aiplatform.googleapis.com"
  )
  if "://" not in endpoint:
    endpoint = f"https://{endpoint}"
  collection = "hyperparameterTuningJobs" if options["tune"] else "customJobs"
  return (
    f"{endpoint.rstrip('/')}/v1/projects/{options['project']}/locations/"
    f"{options['region']}/{collection}"
  )


def build_request_for(
  options: dict[str, Any],
  build: image_build.ImageBuild,
  job_request: dict[str, Any] | None,
) -> dict[str, Any]:
  """The Cloud Build request; with a job request, the build submits it."""
  return image_build.build_request(
    build,
    options["build_service_account"],
    options["project"],
    (vertex_url(options), job_request) if job_request else None,
  )


def ensure_image(
  options: dict[str, Any],
  build: image_build.ImageBuild,
  job_request: dict[str, Any],
  poll_secs: float,
) -> bool:
  """The image in Artifact Registry: reused, or built and pushed by Cloud
  Build. With --no_wait a build is not followed: its last step submits
  `job_request`.

  Returns:
    Whether the build submits the job (the caller must not).

  Raises:
    LaunchError: a preflight problem, or a failed build.
  """
  with _one_line("checking the image's registry"):
    check_registry(options)
    exists = find_image(options, build)
    preflight(options, needs_build=not exists, submits_job=options["no_wait"])
  if exists:
    print(f"Reusing {build.image} (Artifact Registry has it)", flush=True)
    return False
  hands_job = options["no_wait"]
  request = build_request_for(
    options, build, job_request if hands_job else None
  )
  with _one_line("starting the image build"):
    name, log_url = start_build(options, build, request)
  print(
    f"Building {build.image} from {build.dockerfile} with Cloud Build (a "
    f"first CUDA image takes several minutes). Log: {log_url}",
    flush=True,
  )
  if hands_job:
    print(
      f"The build submits the job once the image is pushed; follow it with: "
      f"gcloud builds log --stream {name.split('/')[-1]} "
      f"--region={options['region']} --project={options['project']}",
      flush=True,
    )
    return True
  with _one_line("following the image build"):
    wait_for_build(options, name, log_url, poll_secs)
  return False


def describe_plan(
  options: dict[str, Any],
  build: image_build.ImageBuild,
  job_request: dict[str, Any],
) -> tuple[str, dict[str, Any] | None]:
  """What --dry_run shows: a line on the image, and the Cloud Build request
  it would start (None when Artifact Registry has the image)."""
  try:
    exists = find_image(options, build)
  except Exception as e:  # No credentials or network: say so, show the build.
    first = (str(e).splitlines() or [""])[0][:80]
    where = f"could not ask Artifact Registry ({type(e).__name__}: {first})"
    exists = False
  else:
    where = "not in Artifact Registry"
  if exists:
    return (
      f"Image: {build.image} (in Artifact Registry: reused, no build)",
      None,
    )
  request = build_request_for(
    options, build, job_request if options["no_wait"] else None
  )
  return (
    f"Image: {build.image} ({where}: Cloud Build would build it from "
    f"{build.dockerfile}, {len(build.files)} files)",
    request,
  )
