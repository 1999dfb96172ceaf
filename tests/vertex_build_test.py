"""launch.vertex without an image: it builds this package's image with Cloud
Build (or reuses the one Artifact Registry has) and submits the job on it.
The real clients (service-usage, resource-manager, artifact-registry, build,
aiplatform, storage) talk to local stand-ins on 127.0.0.1:
tests/fake_image_services.py behind tests/fake_vertex.py, and fake-gcs-server
for the context upload."""

import io
import json
import subprocess
import sys
import tarfile

from conftest import REPO
from conftest import cli_env
from fake_image_services import BUILDER
from fake_image_services import VERTEX_AGENT
from fake_image_services import FakeImageServices
from fake_vertex import FakeVertex
import gcs_emulator
import pytest

from launch import image_build
from launch import vertex

pytestmark = pytest.mark.multiprocess

JOB = [
  "--project=proj",
  "--region=us-central1",
  "--staging_bucket=gs://bkt/staging",
  "--base_output_dir=gs://bkt/runs/1",
  "--accelerator_type=NVIDIA_TESLA_T4",
  "--accelerator_count=1",
  "--poll_secs=0.1",
]
TRAINER = ["--", "--config=cats_vs_dogs", "--train_data=gs://bkt/data/train-*"]
BUILD = image_build.plan(
  vertex.default_options(
    project="proj",
    staging_bucket="gs://bkt/staging",
    base_output_dir="gs://bkt/runs/1",
    accelerator_type="NVIDIA_TESLA_T4",
  )
)


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  with gcs_emulator.running(str(tmp_path_factory.mktemp("gcs"))) as emulator:
    emulator.create_bucket("bkt")
    yield emulator


def _blobs(gcs, prefix):
  return gcs.blobs("bkt", prefix)


def launch(vertex_fake, gcs, *args):
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.vertex",
      *JOB,
      f"--api_endpoint={vertex_fake.url}",
      *args,
      *TRAINER,
    ],
    cwd=REPO,
    env={**cli_env("/tmp"), "STORAGE_EMULATOR_HOST": gcs.url},
    capture_output=True,
    text=True,
    timeout=300,
  )


def _jobs(vertex_fake):
  return [r for r in vertex_fake.requests if r["method"] == "POST"]


def _image_of(job):
  pool = job["body"]["jobSpec"]["workerPoolSpecs"][0]
  return pool["containerSpec"]["imageUri"]


def test_a_new_tree_is_built_once_then_reused(gcs):
  services = FakeImageServices()
  with FakeVertex(services=services) as fake:
    first = launch(fake, gcs, "--display_name=first")
    assert first.returncode == 0, first.stdout + first.stderr
    assert len(services.builds) == 1
    (build,) = services.builds
    assert build["images"][0] == BUILD.image
    assert build["steps"][1]["args"][:3] == ["build", "-f", "Dockerfile"]
    assert BUILD.image in build["steps"][1]["args"]
    assert build["source"]["storageSource"] == {
      "bucket": "bkt",
      "object": f"staging/alexnet-tf-build/{BUILD.content_hash}.tar.gz",
    }
    out = first.stdout
    assert f"Building {BUILD.image} from Dockerfile with Cloud Build" in out
    assert "Log: https://console.cloud.google.com/cloud-build/builds" in out
    assert "Build working after" in out and "Build success after" in out
    (job,) = _jobs(fake)
    assert _image_of(job) == BUILD.image
    # The context uploaded is exactly what the Dockerfile copies.
    blob = _blobs(gcs, "staging/alexnet-tf-build/")[
      build["source"]["storageSource"]["object"]
    ]
    with tarfile.open(fileobj=io.BytesIO(blob.download_as_bytes())) as archive:
      assert tuple(sorted(archive.getnames())) == BUILD.files

    second = launch(fake, gcs, "--display_name=second")
    assert second.returncode == 0, second.stdout + second.stderr
    assert len(services.builds) == 1  # Not built again.
    assert f"Reusing {BUILD.image} (Artifact Registry has it)" in second.stdout
    assert [_image_of(j) for j in _jobs(fake)] == [BUILD.image] * 2
    assert not any(
      "prebuilt" in r["path"] or "tf-gpu" in json.dumps(r.get("body"))
      for r in _jobs(fake)
    )


def test_a_failed_build_is_one_line_naming_its_log_and_no_job(gcs):
  services = FakeImageServices()
  services.build_outcome = "FAILURE"
  with FakeVertex(services=services) as fake:
    result = launch(fake, gcs, "--display_name=failed")
    assert _jobs(fake) == []
  assert result.returncode == 1
  (line,) = result.stderr.splitlines()
  assert line.startswith(
    "Error: the image build ended FAILURE (Build step 0 failed: exit status "
    "1); nothing was submitted. Its log: https://console.cloud.google.com/"
  ), line


def _no_api(services):
  services.enabled.discard("cloudbuild.googleapis.com")


def _no_registry_api(services):
  services.enabled.discard("artifactregistry.googleapis.com")


def _maven_repository(services):
  services.repository_format = 2


def _cannot_read_tags(services):
  services.forbidden.add("/tags/")


def _no_repository(services):
  services.repositories.clear()


def _no_push(services):
  services.repository_bindings.clear()


def _no_pull(services):
  # The agent has a role in the project, but not one that pulls.
  services.project_bindings = [
    {"role": "roles/viewer", "members": [f"serviceAccount:{VERTEX_AGENT}"]}
    if VERTEX_AGENT in b["members"][0]
    else b
    for b in services.project_bindings
  ]


@pytest.mark.parametrize(
  "breaks,fragment",
  [
    (
      _no_api,
      "Error: the Cloud Build API is not enabled in project proj: gcloud "
      "services enable cloudbuild.googleapis.com --project=proj",
    ),
    (
      _no_registry_api,
      "Error: the Artifact Registry API is not enabled in project proj: "
      "gcloud services enable artifactregistry.googleapis.com --project=proj",
    ),
    (
      _maven_repository,
      "Error: --repository=alexnet holds MAVEN packages, not Docker images",
    ),
    (
      _cannot_read_tags,
      "Error: checking the image's registry: 403 Permission denied on "
      "resource (the roles this needs: Permissions in the Vertex AI docs)",
    ),
    (
      _no_repository,
      "Error: --repository=alexnet: no Artifact Registry repository alexnet "
      "in us-central1: gcloud artifacts repositories create alexnet "
      "--repository-format=docker --location=us-central1 --project=proj "
      "(or pass --create_repository)",
    ),
    (
      _no_push,
      f"Error: {BUILDER} cannot push images in --repository=alexnet: gcloud "
      "artifacts repositories add-iam-policy-binding alexnet "
      "--location=us-central1 --project=proj "
      f"--member=serviceAccount:{BUILDER} --role=roles/artifactregistry.writer",
    ),
    (
      _no_pull,
      f"Error: {VERTEX_AGENT} cannot pull images in --repository=alexnet: "
      "gcloud artifacts repositories add-iam-policy-binding alexnet",
    ),
  ],
)
def test_each_preflight_failure_is_its_line_before_any_upload(
  gcs, breaks, fragment
):
  services = FakeImageServices()
  breaks(services)
  before = set(_blobs(gcs, "staging/"))
  with FakeVertex(services=services) as fake:
    result = launch(fake, gcs, "--display_name=preflight")
    assert _jobs(fake) == []
  assert result.returncode == 1, result.stdout + result.stderr
  (line,) = result.stderr.splitlines()
  assert line.startswith(fragment), line
  assert services.builds == []
  assert set(_blobs(gcs, "staging/")) == before  # Nothing uploaded.


def test_create_repository_creates_it_when_asked(gcs):
  services = FakeImageServices()
  services.repositories.clear()
  with FakeVertex(services=services) as fake:
    result = launch(fake, gcs, "--create_repository", "--display_name=c")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(_jobs(fake)) == 1
  assert "alexnet" in services.repositories
  assert "Creating the Artifact Registry repository" in result.stdout


def test_no_wait_hands_the_job_to_the_build(gcs):
  services = FakeImageServices()
  with FakeVertex(services=services) as fake:
    dry = launch(fake, gcs, "--display_name=nowait", "--dry_run")
    result = launch(fake, gcs, "--display_name=nowait", "--no_wait")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _jobs(fake) == []  # The build posts it, not the launcher.
  (build,) = services.builds
  assert [s["args"][0] for s in build["steps"][1:4]] == [
    "build",
    "push",
    "push",
  ]
  script = build["steps"][4]["args"][1].replace("$$", "$")
  body = script.split("<<'JOB'\n", 1)[1].split("\nJOB\n", 1)[0]
  expected = json.loads(dry.stdout.split("Vertex AI request:\n", 1)[1])
  assert json.loads(body) == expected
  assert (
    f"{fake.url}/v1/projects/proj/locations/us-central1/customJobs" in script
  )
  assert "gcloud builds log --stream build1" in result.stdout


def test_dry_run_shows_the_build_or_the_reused_image_and_starts_nothing(gcs):
  services = FakeImageServices()
  with FakeVertex(services=services) as fake:
    dry = launch(fake, gcs, "--dry_run", "--display_name=dry")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith(
      f"Image: {BUILD.image} (not in Artifact Registry: Cloud Build would "
      "build it from Dockerfile, "
    )
    build = json.loads(
      dry.stdout.split("Cloud Build request:\n")[1].split("Vertex AI request:")[
        0
      ]
    )
    assert build["images"][0] == BUILD.image
    job = json.loads(dry.stdout.split("Vertex AI request:\n")[1])
    assert _image_of({"body": job}) == BUILD.image
    assert "tf-gpu" not in dry.stdout and "tf-cpu" not in dry.stdout
    services.tags.add(("alexnet", BUILD.name, BUILD.tag))
    reused = launch(fake, gcs, "--dry_run", "--display_name=dry")
    assert reused.stdout.startswith(
      f"Image: {BUILD.image} (in Artifact Registry: reused, no build)"
    )
    assert "Cloud Build request" not in reused.stdout
    assert _jobs(fake) == []
  assert services.builds == []
  assert not [m for m, _ in services.requests if m == "POST"]


def test_what_cannot_be_judged_is_said_and_does_not_stop_the_job(gcs):
  """Vertex AI's agent with no role yet (before a project's first job), and
  IAM policies the user may not read: a note each, and the job goes on."""
  services = FakeImageServices()
  services.project_bindings = [
    b for b in services.project_bindings if VERTEX_AGENT not in b["members"][0]
  ]
  with FakeVertex(services=services) as fake:
    first = launch(fake, gcs, "--display_name=agentless")
    assert first.returncode == 0, first.stdout + first.stderr
    assert (
      f"Note: {VERTEX_AGENT} has no role in project proj yet" in first.stdout
    )
    services.forbidden.add(":getIamPolicy")
    services.tags.clear()
    second = launch(fake, gcs, "--display_name=unreadable")
    assert second.returncode == 0, second.stdout + second.stderr
    assert (
      "Note: cannot read the repository's and the project's IAM"
      in second.stdout
    )
    assert len(_jobs(fake)) == 2 and len(services.builds) == 2
