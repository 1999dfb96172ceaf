"""launch.vertex with the real google-cloud-aiplatform and google-cloud-storage
clients, against a fake Vertex REST server and fake-gcs-server on 127.0.0.1."""

import json
import subprocess
import sys

import pytest

import gcs_emulator
from conftest import REPO, cli_env
from fake_vertex import FakeVertex

BASE = ["--project=proj", "--region=us-central1", "--staging_bucket=gs://bkt/staging",
        "--base_output_dir=gs://bkt/runs/1", "--display_name=job1"]


def _as_named_json(body):
  """The client sends enums as integers; read them back as names."""
  from google.cloud.aiplatform_v1.types import custom_job
  from google.protobuf import json_format
  message = custom_job.CustomJob.from_json(json.dumps(body), ignore_unknown_fields=True)
  return json_format.MessageToDict(custom_job.CustomJob.pb(message))


def launch(*args, env=None, timeout=300):
  return subprocess.run([sys.executable, "-m", "launch.vertex", *args], cwd=REPO,
                        env={**cli_env("/tmp"), **(env or {})}, capture_output=True,
                        text=True, timeout=timeout)


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  with gcs_emulator.running(str(tmp_path_factory.mktemp("gcs"))) as emulator:
    emulator.create_bucket("bkt")
    yield emulator


def test_submit_sends_the_dry_run_request_and_uploads_the_package(gcs):
  shape = ["--machine_type=n1-standard-16", "--accelerator_type=NVIDIA_TESLA_V100",
           "--accelerator_count=4", "--spot", "--service_account=sa@proj.iam.gserviceaccount.com",
           "--labels=team=vision,run=a1", "--restart_job_on_worker_restart"]
  trainer = ["--", "--strategy=mirrored", "--train_data=gs://bkt/data/train-*",
             "--epochs=20"]
  dry = launch(*BASE, *shape, "--dry_run", *trainer)
  assert dry.returncode == 0, dry.stderr
  expected = json.loads(dry.stdout)
  secret = "ya29.super-secret-token"
  env = {"STORAGE_EMULATOR_HOST": gcs.url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": secret}
  with FakeVertex() as vertex:
    result = launch(*BASE, *shape, f"--api_endpoint={vertex.url}", "--wait",
                    "--poll_secs=1", *trainer, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    posts = [r for r in vertex.requests if r["method"] == "POST"]
  assert len(posts) == 1
  assert posts[0]["path"].split("?")[0] == "/v1/projects/proj/locations/us-central1/customJobs"
  sent = _as_named_json(posts[0]["body"])
  spec, want = sent["jobSpec"], expected["jobSpec"]
  assert sent["displayName"] == "job1" and sent["labels"] == {"team": "vision", "run": "a1"}
  assert len(spec["workerPoolSpecs"]) == 1
  pool, want_pool = spec["workerPoolSpecs"][0], want["workerPoolSpecs"][0]
  assert pool["machineSpec"] == want_pool["machineSpec"] == {
      "machineType": "n1-standard-16", "acceleratorType": "NVIDIA_TESLA_V100",
      "acceleratorCount": 4}
  assert pool["replicaCount"] == "1"
  package = pool["pythonPackageSpec"]
  assert package == want_pool["pythonPackageSpec"]
  assert package["pythonModule"] == "trainer.task"
  assert package["args"] == ["--strategy=mirrored", "--train_data=gs://bkt/data/train-*",
                             "--epochs=20"]
  assert package["packageUris"] == ["gs://bkt/staging/alexnet-tf/job1/alexnet-tf-0.1.0.tar.gz"]
  assert spec["baseOutputDirectory"] == {"outputUriPrefix": "gs://bkt/runs/1"}
  assert spec["serviceAccount"] == "sa@proj.iam.gserviceaccount.com"
  assert spec["scheduling"]["strategy"] == "SPOT"
  assert spec["scheduling"]["restartJobOnWorkerRestart"] is True
  # The package really is in the bucket, and is this project's sdist.
  from google.auth.credentials import AnonymousCredentials
  from google.cloud import storage
  client = storage.Client(project="proj", credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": gcs.url})
  blob = client.bucket("bkt").get_blob("staging/alexnet-tf/job1/alexnet-tf-0.1.0.tar.gz")
  assert blob is not None and blob.size > 10_000
  assert "JOB_STATE_RUNNING" in result.stdout and "JOB_STATE_SUCCEEDED" in result.stdout
  assert "customJobs/4242" in result.stdout
  assert secret not in result.stdout + result.stderr + dry.stdout


def test_failed_job_makes_wait_exit_non_zero(gcs):
  env = {"STORAGE_EMULATOR_HOST": gcs.url}
  with FakeVertex(states=("JOB_STATE_PENDING", "JOB_STATE_FAILED")) as vertex:
    result = launch(*BASE, f"--api_endpoint={vertex.url}", "--wait", "--poll_secs=1",
                    env=env)
  assert result.returncode == 1
  assert "JOB_STATE_FAILED" in result.stdout


def test_multi_machine_shape_has_chief_and_worker_pools():
  result = launch(*BASE, "--machine_type=a2-highgpu-2g", "--accelerator_type=NVIDIA_TESLA_A100",
                  "--accelerator_count=2", "--workers=3", "--dry_run")
  assert result.returncode == 0, result.stderr
  pools = json.loads(result.stdout)["jobSpec"]["workerPoolSpecs"]
  assert [p["replicaCount"] for p in pools] == ["1", "3"]
  assert pools[0]["machineSpec"] == pools[1]["machineSpec"]
  assert "--strategy=multi_worker" in pools[0]["pythonPackageSpec"]["args"]


def test_data_service_pool_goes_through_the_real_client(gcs):
  env = {"STORAGE_EMULATOR_HOST": gcs.url}
  args = [*BASE, "--data_service_workers=3", "--data_service_machine_type=n2-highcpu-32",
          "--", "--train_data=gs://bkt/data/train-*"]
  dry = launch(*args[:-2], "--dry_run", *args[-2:])
  assert dry.returncode == 0, dry.stderr
  with FakeVertex() as vertex:
    result = launch(*args[:-2], f"--api_endpoint={vertex.url}", *args[-2:], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    (post,) = [r for r in vertex.requests if r["method"] == "POST"]
  pools = _as_named_json(post["body"])["jobSpec"]["workerPoolSpecs"]
  assert pools == json.loads(dry.stdout)["jobSpec"]["workerPoolSpecs"]
  # Pool 1 (workers) left empty the way Vertex expects; pool 2 serves input.
  assert pools[1] == {}
  chief, service = pools[0], pools[2]
  assert chief["pythonPackageSpec"]["args"] == ["--train_data=gs://bkt/data/train-*",
                                                "--data_service=vertex"]
  assert service["replicaCount"] == "3"
  assert service["machineSpec"] == {"machineType": "n2-highcpu-32"}
  assert service["pythonPackageSpec"]["pythonModule"] == "trainer.data_service"
  assert service["pythonPackageSpec"]["args"] == ["--role=vertex"]
  assert "tf-cpu" in service["pythonPackageSpec"]["executorImageUri"]
  assert service["pythonPackageSpec"]["packageUris"] == chief["pythonPackageSpec"]["packageUris"]


def test_data_service_pool_follows_the_worker_pool():
  result = launch(*BASE, "--machine_type=g2-standard-8", "--accelerator_type=NVIDIA_L4",
                  "--accelerator_count=1", "--workers=2", "--data_service_workers=4",
                  "--dry_run")
  assert result.returncode == 0, result.stderr
  pools = json.loads(result.stdout)["jobSpec"]["workerPoolSpecs"]
  assert [p["replicaCount"] for p in pools] == ["1", "2", "4"]
  assert "tf-gpu" in pools[1]["pythonPackageSpec"]["executorImageUri"]
  assert "accelerator_type" not in json.dumps(pools[2]["machineSpec"]).lower()


@pytest.mark.parametrize("shape,topology", [
    (["--machine_type=cloud-tpu", "--accelerator_type=TPU_V3", "--accelerator_count=8"], None),
    (["--machine_type=ct5lp-hightpu-4t", "--accelerator_type=TPU_V5_LITEPOD",
      "--accelerator_count=4"], "2x2"),
])
def test_tpu_shapes(shape, topology):
  result = launch(*BASE, *shape, "--dry_run")
  assert result.returncode == 0, result.stderr
  pool = json.loads(result.stdout)["jobSpec"]["workerPoolSpecs"][0]
  assert pool["machineSpec"].get("tpuTopology") == topology
  assert "tf-tpu" in pool["pythonPackageSpec"]["executorImageUri"]
  assert pool["pythonPackageSpec"]["args"][-2:] == ["--strategy=tpu", "--tpu=local"]


@pytest.mark.parametrize("args,fragment", [
    (["--machine_type=n1-standard-8", "--accelerator_type=NVIDIA_L4",
      "--accelerator_count=1"], "NVIDIA_L4 runs on g2-* machines"),
    (["--machine_type=a2-highgpu-2g", "--accelerator_type=NVIDIA_TESLA_A100",
      "--accelerator_count=4"], "has 2 GPUs"),
    (["--machine_type=n1-standard-8", "--accelerator_type=NVIDIA_TESLA_T4",
      "--accelerator_count=3"], "take 1, 2, 4 or 8"),
    (["--machine_type=cloud-tpu", "--accelerator_type=TPU_V3",
      "--accelerator_count=4"], "takes 8 TPU cores"),
    (["--workers=-1"], "--workers must be >= 0"),
    (["--accelerator_type=NVIDIA_TESLA_V200", "--accelerator_count=1"], "is not one of"),
    (["--workers=2", "--", "--strategy=mirrored"], "contradicts"),
    (["--", "--train_data=/home/me/data/train-*"], "is a local path"),
    (["--labels=Team=X"], "--labels"),
    (["--data_service_workers=-2"], "--data_service_workers must be >= 0"),
    (["--data_service_workers=2", "--", "--data_service=grpc://h:5050"],
     "drop the trainer flag --data_service"),
    (["--machine_type=cloud-tpu", "--accelerator_type=TPU_V3", "--accelerator_count=8",
      "--data_service_workers=2"], "--data_service_workers is not supported with TPU"),
])
def test_bad_values_fail_before_anything_is_uploaded(args, fragment):
  result = launch(*BASE, *args)
  assert result.returncode == 2
  assert fragment in result.stderr and "Traceback" not in result.stderr


def test_submitting_never_imports_tensorflow():
  code = ("import sys, runpy; sys.argv = ['launch.vertex'] + %r; "
          "import launch.vertex as v; from absl import app\n"
          "try:\n  app.run(v.main)\nexcept SystemExit:\n  pass\n"
          "print('TF_IMPORTED' if 'tensorflow' in sys.modules else 'NO_TF')"
          % (BASE + ["--dry_run"]))
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env("/tmp"),
                          capture_output=True, text=True, timeout=120)
  assert "NO_TF" in result.stdout, result.stdout + result.stderr
