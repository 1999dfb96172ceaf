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
                             "--epochs=20", "--require_accelerator=gpu"]
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
  for pool in pools:  # Every trainer refuses to train without its GPU.
    assert "--require_accelerator=gpu" in pool["pythonPackageSpec"]["args"]


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


TPU_SHAPES = [
    (["--machine_type=cloud-tpu", "--accelerator_type=TPU_V3", "--accelerator_count=8"], None),
    (["--machine_type=ct5lp-hightpu-4t", "--accelerator_type=TPU_V5_LITEPOD",
      "--accelerator_count=4"], "2x2"),
]
TPU_IMAGE = "us-central1-docker.pkg.dev/proj/repo/alexnet-tf-tpu:1"


@pytest.mark.parametrize("shape,topology", TPU_SHAPES)
def test_tpu_shapes_run_in_a_container(shape, topology):
  result = launch(*BASE, *shape, f"--container_image={TPU_IMAGE}", "--dry_run")
  assert result.returncode == 0, result.stderr
  pool = json.loads(result.stdout)["jobSpec"]["workerPoolSpecs"][0]
  assert pool["machineSpec"].get("tpuTopology") == topology
  assert "pythonPackageSpec" not in pool
  assert pool["containerSpec"] == {
      "imageUri": TPU_IMAGE,
      "args": ["--strategy=tpu", "--tpu=local", "--require_accelerator=tpu"]}


@pytest.mark.parametrize("shape,topology", TPU_SHAPES)
def test_tpu_jobs_need_a_container_image(shape, topology):
  # Vertex has no prebuilt TensorFlow TPU training image in the supported
  # range, and pip would put the CPU/GPU wheel over tensorflow-tpu.
  del topology
  for extra in ([], ["--executor_image_uri=us-docker.pkg.dev/vertex-ai/training/"
                     "tf-tpu.2-15.cp310:latest"]):
    result = launch(*BASE, *shape, *extra, "--dry_run")
    assert result.returncode == 2, result.stdout
    assert "needs --container_image" in result.stderr
    assert "Dockerfile.tpu" in result.stderr
    assert _one_line(result.stderr)


def test_tpu_strategy_given_with_a_space_is_understood():
  shape = TPU_SHAPES[1][0]
  result = launch(*BASE, *shape, f"--container_image={TPU_IMAGE}", "--dry_run", "--",
                  "--strategy", "tpu", "--tpu", "local")
  assert result.returncode == 0, result.stderr
  args = json.loads(result.stdout)["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["args"]
  # Passed through as given, nothing added twice.
  assert args == ["--strategy", "tpu", "--tpu", "local", "--require_accelerator=tpu"]


@pytest.mark.parametrize("shape,expected", [
    (["--machine_type=g2-standard-8", "--accelerator_type=NVIDIA_L4",
      "--accelerator_count=1"], ["--require_accelerator=gpu"]),
    (["--machine_type=n1-standard-8"], []),
])
def test_require_accelerator_follows_the_pool(shape, expected):
  result = launch(*BASE, *shape, "--dry_run", "--", "--epochs=2")
  assert result.returncode == 0, result.stderr
  args = json.loads(result.stdout)["jobSpec"]["workerPoolSpecs"][0]["pythonPackageSpec"]["args"]
  assert args == ["--epochs=2", *expected]


def test_an_explicit_require_accelerator_is_kept_and_checked():
  gpu = ["--machine_type=g2-standard-8", "--accelerator_type=NVIDIA_L4",
         "--accelerator_count=1"]
  kept = launch(*BASE, *gpu, "--dry_run", "--", "--require_accelerator=none")
  assert kept.returncode == 0, kept.stderr
  args = json.loads(kept.stdout)["jobSpec"]["workerPoolSpecs"][0]["pythonPackageSpec"]["args"]
  assert args == ["--require_accelerator=none"]
  wrong = launch(*BASE, *gpu, "--dry_run", "--", "--require_accelerator=tpu")
  assert wrong.returncode == 2 and "--require_accelerator=tpu" in wrong.stderr
  cpu = launch(*BASE, "--dry_run", "--", "--require_accelerator=gpu")
  assert cpu.returncode == 2 and "has no GPU" in cpu.stderr


GPU_IMAGE = "us-central1-docker.pkg.dev/proj/repo/alexnet-tf:2.21"


def test_container_image_sends_container_spec_and_uploads_nothing(gcs):
  shape = ["--machine_type=a2-highgpu-2g", "--accelerator_type=NVIDIA_TESLA_A100",
           "--accelerator_count=2", "--workers=1", "--data_service_workers=2",
           f"--container_image={GPU_IMAGE}", "--display_name=container1"]
  trainer = ["--", "--train_data=gs://bkt/data/train-*", "--epochs=3"]
  dry = launch(*BASE, *shape, "--dry_run", *trainer)
  assert dry.returncode == 0, dry.stderr
  env = {"STORAGE_EMULATOR_HOST": gcs.url}
  with FakeVertex() as vertex:
    result = launch(*BASE, *shape, f"--api_endpoint={vertex.url}", *trainer, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    (post,) = [r for r in vertex.requests if r["method"] == "POST"]
  pools = _as_named_json(post["body"])["jobSpec"]["workerPoolSpecs"]
  assert pools == json.loads(dry.stdout)["jobSpec"]["workerPoolSpecs"]
  trainer_args = ["--train_data=gs://bkt/data/train-*", "--epochs=3",
                  "--strategy=multi_worker", "--data_service=vertex",
                  "--require_accelerator=gpu"]
  for pool in pools[:2]:
    assert "pythonPackageSpec" not in pool
    assert pool["containerSpec"] == {"imageUri": GPU_IMAGE, "args": trainer_args}
  # The input pool runs another module from the same image.
  assert pools[2]["containerSpec"] == {
      "imageUri": GPU_IMAGE, "command": ["python", "-m", "trainer.data_service"],
      "args": ["--role=vertex"]}
  assert "Uploading" not in result.stdout
  from google.auth.credentials import AnonymousCredentials
  from google.cloud import storage
  client = storage.Client(project="proj", credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": gcs.url})
  assert not [b.name for b in client.list_blobs("bkt", prefix="staging/alexnet-tf/container1")]


def test_container_image_and_executor_image_exclude_each_other():
  result = launch(*BASE, f"--container_image={GPU_IMAGE}",
                  "--executor_image_uri=us-docker.pkg.dev/vertex-ai/training/x:latest")
  assert result.returncode == 2
  assert "--container_image" in result.stderr and "--executor_image_uri" in result.stderr


def test_cloud_storage_fuse_paths_are_accepted():
  result = launch(*BASE, "--dry_run", "--", "--train_data=/gcs/bkt/data/train-*",
                  "--eval_data=/gcs/bkt/data/validation-*", "--model_dir=/gcs/bkt/runs/fuse")
  assert result.returncode == 0, result.stderr
  args = json.loads(result.stdout)["jobSpec"]["workerPoolSpecs"][0]["pythonPackageSpec"]["args"]
  assert args == ["--train_data=/gcs/bkt/data/train-*",
                  "--eval_data=/gcs/bkt/data/validation-*", "--model_dir=/gcs/bkt/runs/fuse"]


def _one_line(stderr):
  lines = [l for l in stderr.splitlines() if l.strip()]
  return len(lines) == 1 and lines[0].startswith("Error: ")


def test_trainer_flag_typo_fails_before_anything_is_uploaded(gcs):
  env = {"STORAGE_EMULATOR_HOST": gcs.url}
  with FakeVertex() as vertex:
    result = launch(*BASE, "--display_name=typo", f"--api_endpoint={vertex.url}", "--",
                    "--epocs=3", env=env)
    assert vertex.requests == []
  assert result.returncode == 2
  assert _one_line(result.stderr), result.stderr
  assert "--epocs" in result.stderr or "'epocs'" in result.stderr
  assert "epochs" in result.stderr  # absl's suggestion
  from google.auth.credentials import AnonymousCredentials
  from google.cloud import storage
  client = storage.Client(project="proj", credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": gcs.url})
  assert not [b.name for b in client.list_blobs("bkt", prefix="staging/alexnet-tf/typo")]


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
      f"--container_image={TPU_IMAGE}", "--data_service_workers=2"],
     "--data_service_workers is not supported with TPU"),
    # Trainer flags are parsed into the trainer's Config on this machine.
    (["--", "--strategy=gpus"], "--strategy=gpus"),
    (["--", "--epochs=three"], "--epochs=three"),
    (["--", "--epochs=0"], "--epochs must be >= 1"),
    (["--", "--config=nosuch"], "nosuch"),
    (["--", "--strategy"], "--strategy"),
    (["--", "--epochs=2", "stray"], "stray"),
    (["--workers=2", "--", "--strategy", "mirrored"], "contradicts"),
    (["--", "--config=tiny", "--data_service=vertex"], "--data_service=vertex"),
    (["--", "--model_dir=/gcs/"], "is a local path"),
    (["--", "--eval_data=/gcsfuse/bkt/x"], "is a local path"),
])
def test_bad_values_fail_before_anything_is_uploaded(args, fragment):
  result = launch(*BASE, *args)
  assert result.returncode == 2
  assert fragment in result.stderr and "Traceback" not in result.stderr
  assert _one_line(result.stderr), result.stderr


@pytest.mark.parametrize("missing,message", [
    ("--base_output_dir", "--base_output_dir is required: a gs:// path for the job's outputs"),
    ("--staging_bucket", "--staging_bucket is required: a gs:// path for the package "
                         "and Vertex's staging files"),
    ("--project", "--project is required"),
])
def test_missing_launcher_flags_say_so(missing, message):
  args = [a for a in BASE if not a.startswith(missing + "=")]
  result = launch(*args, "--dry_run")
  assert result.returncode == 2
  assert result.stderr.strip() == f"Error: {message}"


def test_container_path_needs_no_staging_bucket():
  args = [a for a in BASE if not a.startswith("--staging_bucket=")]
  result = launch(*args, f"--container_image={GPU_IMAGE}", "--dry_run")
  assert result.returncode == 0, result.stderr
  assert result.stdout.count("containerSpec") == 1


def test_submitting_never_imports_tensorflow():
  code = ("import sys, runpy; sys.argv = ['launch.vertex'] + %r; "
          "import launch.vertex as v; from absl import app\n"
          "try:\n  app.run(v.main)\nexcept SystemExit:\n  pass\n"
          "print('TF_IMPORTED' if 'tensorflow' in sys.modules else 'NO_TF')"
          % (BASE + ["--dry_run"]))
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env("/tmp"),
                          capture_output=True, text=True, timeout=120)
  assert "NO_TF" in result.stdout, result.stdout + result.stderr
