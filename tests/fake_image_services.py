"""A local stand-in for what launch.vertex's image build calls besides
Vertex AI: Service Usage, Resource Manager, Artifact Registry and Cloud
Build, as their REST APIs answer the real clients (google-cloud-service-usage,
-resource-manager, -artifact-registry, -build). Served by tests/fake_vertex.py
on the same 127.0.0.1 port; it records every request.

A build moves QUEUED -> WORKING -> its outcome, one state per GET, and on
SUCCESS its image's tag appears in the registry.
"""

import re
import urllib.parse

PROJECT_NUMBER = "123456"
BUILDER = f"{PROJECT_NUMBER}-compute@developer.gserviceaccount.com"
VERTEX_AGENT = (
  f"service-{PROJECT_NUMBER}@gcp-sa-aiplatform-cc.iam.gserviceaccount.com"
)


class FakeImageServices:
  def __init__(self, project="proj", region="us-central1"):
    self.project, self.region = project, region
    self.enabled = {
      "cloudbuild.googleapis.com",
      "artifactregistry.googleapis.com",
    }
    self.repositories = {"alexnet"}
    self.tags = set()  # (repository, package, tag)
    self.repository_bindings = [
      {
        "role": "roles/artifactregistry.writer",
        "members": [f"serviceAccount:{BUILDER}"],
      }
    ]
    self.project_bindings = [
      {
        "role": "roles/aiplatform.customCodeServiceAgent",
        "members": [f"serviceAccount:{VERTEX_AGENT}"],
      },
      {
        "role": "roles/aiplatform.user",
        "members": [f"serviceAccount:{BUILDER}"],
      },
    ]
    self.repository_format = 1  # DOCKER (2 is MAVEN)
    self.forbidden = set()  # paths (substrings) answered 403
    self.build_outcome = "SUCCESS"
    self.builds = []  # The requests, in order.
    self._build_gets = {}
    self.requests = []

  def handle(self, method, path, body):
    """(status, JSON body) for a path this stand-in serves, else None."""
    self.requests.append((method, path))
    if any(part in path for part in self.forbidden):
      return 403, {
        "error": {"code": 403, "message": "Permission denied on resource",
                  "status": "PERMISSION_DENIED"}
      }  # fmt: skip
    path, _, query = path.partition("?")
    self._query = urllib.parse.parse_qs(query)
    prefix = f"/v1/projects/{self.project}"
    location = f"{prefix}/locations/{self.region}"
    service = re.fullmatch(rf"{prefix}/services/([^/]+)", path)
    if service:
      state = 2 if service.group(1) in self.enabled else 1  # ENABLED, DISABLED
      return 200, {"name": path[4:], "state": state}
    if path == f"/v3/projects/{self.project}":
      return 200, {
        "name": f"projects/{PROJECT_NUMBER}",
        "projectId": self.project,
      }
    if path == f"/v3/projects/{self.project}:getIamPolicy":
      return 200, {"bindings": self.project_bindings}
    repository = re.fullmatch(rf"{location}/repositories/([^/:]+)(.*)", path)
    if repository:
      return self._repository(method, repository.group(1), repository.group(2))
    if path == f"{location}/repositories" and method == "POST":
      return self._create_repository(body)
    # Regional builds only: the global paths are not served.
    if path == f"{location}/builds" and method == "POST":
      return self._create_build(body)
    build = re.fullmatch(rf"{location}/builds/([^/]+)", path)
    if build:
      return self._get_build(build.group(1))
    return None

  def _repository(self, method, name, rest):
    full = (
      f"projects/{self.project}/locations/{self.region}/repositories/{name}"
    )
    if name not in self.repositories:
      return 404, _not_found(full)
    if not rest:
      return 200, {"name": full, "format": self.repository_format}
    if rest == ":getIamPolicy":
      return 200, {"bindings": self.repository_bindings}
    tag = re.fullmatch(r"/packages/([^/]+)/tags/([^/]+)", rest)
    if tag and (name, tag.group(1), tag.group(2)) in self.tags:
      return 200, {"name": full + rest, "version": "sha256:0"}
    return 404, _not_found(full + rest)

  def _create_repository(self, body):
    (name,) = self._query["repositoryId"]
    self.repositories.add(name)
    full = (
      f"projects/{self.project}/locations/{self.region}/repositories/{name}"
    )
    return 200, {
      "name": f"projects/{self.project}/locations/{self.region}/operations/1",
      "done": True,
      "response": {
        "@type": "type.googleapis.com/google.devtools.artifactregistry.v1."
        "Repository",
        **body,
        "name": full,
      },
    }

  def _create_build(self, body):
    build_id = f"build{len(self.builds) + 1}"
    self.builds.append(body)
    self._build_gets[build_id] = 0
    build = self._build(build_id, "QUEUED")
    return 200, {
      "name": f"operations/build/{self.project}/{build_id}",
      "metadata": {
        "@type": "type.googleapis.com/google.devtools.cloudbuild.v1."
        "BuildOperationMetadata",
        "build": build,
      },
    }

  def _get_build(self, build_id):
    if build_id not in self._build_gets:
      return 404, _not_found(build_id)
    self._build_gets[build_id] += 1
    states = ["QUEUED", "WORKING", self.build_outcome]
    state = states[min(self._build_gets[build_id], 2)]
    if state == "SUCCESS":
      for image in self.builds[int(build_id[5:]) - 1].get("images", []):
        repository_path, _, tag = image.rpartition(":")
        _, _, repository, package = repository_path.split("/")
        self.tags.add((repository, package, tag))
    return 200, self._build(build_id, state)

  def _build(self, build_id, state):
    return {
      "id": build_id,
      "status": state,
      "logUrl": f"https://console.cloud.google.com/cloud-build/builds;"
      f"region={self.region}/{build_id}?project={PROJECT_NUMBER}",
      **(
        {"statusDetail": "Build step 0 failed: exit status 1"}
        if state == "FAILURE"
        else {}
      ),
    }


def _not_found(name):
  return {
    "error": {
      "code": 404,
      "message": f"{name} not found",
      "status": "NOT_FOUND",
    }
  }
