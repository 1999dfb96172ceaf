"""launch.vertex with the real google-cloud-aiplatform and google-cloud-storage
clients, against a fake Vertex REST server and fake-gcs-server on 127.0.0.1."""

import json
import subprocess
import sys

from conftest import REPO
from conftest import cli_env
from conftest import probe_command
from fake_vertex import FakeVertex
import gcs_emulator
import pytest

pytestmark = pytest.mark.multiprocess

BASE = [
  "--project=proj",
  "--region=us-central1",
  "--staging_bucket=gs://bkt/staging",
  "--base_output_dir=gs://bkt/runs/1",
  "--display_name=job1",
]


def _as_named_json(body, kind="CustomJob"):
  """The client sends enums as integers; read them back as names."""
  from google.cloud import aiplatform_v1
  from google.protobuf import json_format

  message_class = getattr(aiplatform_v1.types, kind)
  message = message_class.from_json(
    json.dumps(body), ignore_unknown_fields=True
  )
  return json_format.MessageToDict(message_class.pb(message))


# Without an image flag launch.vertex builds this package's image (tested in
# vertex_build_test.py); jobs here take the package path on an image of the
# user's own unless a test passes --container_image or --executor_image_uri.
OWN_IMAGE = "us-central1-docker.pkg.dev/proj/repo/tf-2-21:1"


def _with_an_image(args):
  if any(
    a.startswith(("--container_image", "--executor_image_uri")) for a in args
  ):
    return list(args)
  return [f"--executor_image_uri={OWN_IMAGE}", *args]


def launch(*args, env=None, timeout=300):
  args = _with_an_image(args)
  return subprocess.run(
    [sys.executable, "-m", "launch.vertex", *args],
    cwd=REPO,
    env={**cli_env("/tmp"), **(env or {})},
    capture_output=True,
    text=True,
    timeout=timeout,
  )


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  with gcs_emulator.running(str(tmp_path_factory.mktemp("gcs"))) as emulator:
    emulator.create_bucket("bkt")
    yield emulator


def test_submit_sends_the_dry_run_request_and_uploads_the_package(gcs):
  shape = [
    "--machine_type=n1-standard-16",
    "--accelerator_type=NVIDIA_TESLA_V100",
    "--accelerator_count=4",
    "--spot",
    "--service_account=sa@proj.iam.gserviceaccount.com",
    "--labels=team=vision,run=a1",
    "--restart_job_on_worker_restart",
  ]
  trainer = [
    "--",
    "--strategy=mirrored",
    "--train_data=gs://bkt/data/train-*",
    "--epochs=20",
  ]
  dry = launch(*BASE, *shape, "--dry_run", *trainer)
  assert dry.returncode == 0, dry.stderr
  expected = json.loads(dry.stdout)
  secret = "ya29.super-secret-token"
  env = {
    "STORAGE_EMULATOR_HOST": gcs.url,
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": secret,
  }
  with FakeVertex() as vertex:
    result = launch(
      *BASE,
      *shape,
      f"--api_endpoint={vertex.url}",
      "--wait",
      "--poll_secs=1",
      *trainer,
      env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    posts = [r for r in vertex.requests if r["method"] == "POST"]
  assert len(posts) == 1
  assert (
    posts[0]["path"].split("?")[0]
    == "/v1/projects/proj/locations/us-central1/customJobs"
  )
  sent = _as_named_json(posts[0]["body"])
  spec, want = sent["jobSpec"], expected["jobSpec"]
  assert sent["displayName"] == "job1" and sent["labels"] == {
    "team": "vision",
    "run": "a1",
  }
  assert len(spec["workerPoolSpecs"]) == 1
  pool, want_pool = spec["workerPoolSpecs"][0], want["workerPoolSpecs"][0]
  assert (
    pool["machineSpec"]
    == want_pool["machineSpec"]
    == {
      "machineType": "n1-standard-16",
      "acceleratorType": "NVIDIA_TESLA_V100",
      "acceleratorCount": 4,
    }
  )
  assert pool["replicaCount"] == "1"
  package = pool["pythonPackageSpec"]
  assert package == want_pool["pythonPackageSpec"]
  assert package["pythonModule"] == "trainer.task"
  assert package["args"] == [
    "--strategy=mirrored",
    "--train_data=gs://bkt/data/train-*",
    "--epochs=20",
    "--require_accelerator=gpu",
  ]
  assert package["packageUris"] == [
    "gs://bkt/staging/alexnet-tf/job1/alexnet-tf-0.1.0.tar.gz"
  ]
  assert spec["baseOutputDirectory"] == {"outputUriPrefix": "gs://bkt/runs/1"}
  assert spec["serviceAccount"] == "sa@proj.iam.gserviceaccount.com"
  assert spec["scheduling"]["strategy"] == "SPOT"
  assert spec["scheduling"]["restartJobOnWorkerRestart"] is True
  # The package really is in the bucket, and is this project's sdist.
  from google.auth.credentials import AnonymousCredentials
  from google.cloud import storage

  client = storage.Client(
    project="proj",
    credentials=AnonymousCredentials(),
    client_options={"api_endpoint": gcs.url},
  )
  blob = client.bucket("bkt").get_blob(
    "staging/alexnet-tf/job1/alexnet-tf-0.1.0.tar.gz"
  )
  assert blob is not None and blob.size > 10_000
  assert (
    "JOB_STATE_RUNNING" in result.stdout
    and "JOB_STATE_SUCCEEDED" in result.stdout
  )
  assert "customJobs/4242" in result.stdout
  assert secret not in result.stdout + result.stderr + dry.stdout


def test_failed_job_makes_wait_exit_non_zero(gcs):
  env = {"STORAGE_EMULATOR_HOST": gcs.url}
  with FakeVertex(states=("JOB_STATE_PENDING", "JOB_STATE_FAILED")) as vertex:
    result = launch(
      *BASE, f"--api_endpoint={vertex.url}", "--wait", "--poll_secs=1", env=env
    )
  assert result.returncode == 1
  assert "JOB_STATE_FAILED" in result.stdout


def test_multi_machine_shape_has_chief_and_worker_pools():
  result = launch(
    *BASE,
    "--machine_type=a2-highgpu-2g",
    "--accelerator_type=NVIDIA_TESLA_A100",
    "--accelerator_count=2",
    "--workers=3",
    "--dry_run",
  )
  assert result.returncode == 0, result.stderr
  pools = json.loads(result.stdout)["jobSpec"]["workerPoolSpecs"]
  assert [p["replicaCount"] for p in pools] == ["1", "3"]
  assert pools[0]["machineSpec"] == pools[1]["machineSpec"]
  assert "--strategy=multi_worker" in pools[0]["pythonPackageSpec"]["args"]
  for pool in pools:  # Every trainer refuses to train without its GPU.
    assert "--require_accelerator=gpu" in pool["pythonPackageSpec"]["args"]


def test_data_service_pool_goes_through_the_real_client(gcs):
  env = {"STORAGE_EMULATOR_HOST": gcs.url}
  args = [
    *BASE,
    "--data_service_workers=3",
    "--data_service_machine_type=n2-highcpu-32",
    "--",
    "--train_data=gs://bkt/data/train-*",
  ]
  dry = launch(*args[:-2], "--dry_run", *args[-2:])
  assert dry.returncode == 0, dry.stderr
  with FakeVertex() as vertex:
    result = launch(
      *args[:-2], f"--api_endpoint={vertex.url}", *args[-2:], env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (post,) = [r for r in vertex.requests if r["method"] == "POST"]
  pools = _as_named_json(post["body"])["jobSpec"]["workerPoolSpecs"]
  assert pools == json.loads(dry.stdout)["jobSpec"]["workerPoolSpecs"]
  # Pool 1 (workers) left empty the way Vertex expects; pool 2 serves input.
  assert pools[1] == {}
  chief, service = pools[0], pools[2]
  assert chief["pythonPackageSpec"]["args"] == [
    "--train_data=gs://bkt/data/train-*",
    "--data_service=vertex",
  ]
  assert service["replicaCount"] == "3"
  assert service["machineSpec"] == {"machineType": "n2-highcpu-32"}
  assert service["pythonPackageSpec"]["pythonModule"] == "trainer.data_service"
  assert service["pythonPackageSpec"]["args"] == ["--role=vertex"]
  # The input pool runs the trainers' image (on a CPU machine).
  assert service["pythonPackageSpec"]["executorImageUri"] == OWN_IMAGE
  assert (
    service["pythonPackageSpec"]["packageUris"]
    == chief["pythonPackageSpec"]["packageUris"]
  )


def test_data_service_pool_follows_the_worker_pool():
  result = launch(
    *BASE,
    "--machine_type=g2-standard-8",
    "--accelerator_type=NVIDIA_L4",
    "--accelerator_count=1",
    "--workers=2",
    "--data_service_workers=4",
    "--dry_run",
  )
  assert result.returncode == 0, result.stderr
  pools = json.loads(result.stdout)["jobSpec"]["workerPoolSpecs"]
  assert [p["replicaCount"] for p in pools] == ["1", "2", "4"]
  assert pools[1]["pythonPackageSpec"]["executorImageUri"] == OWN_IMAGE
  assert "accelerator_type" not in json.dumps(pools[2]["machineSpec"]).lower()


TPU_SHAPES = [
  (
    [
      "--machine_type=cloud-tpu",
      "--accelerator_type=TPU_V3",
      "--accelerator_count=8",
    ],
    None,
  ),
  (
    [
      "--machine_type=ct5lp-hightpu-4t",
      "--accelerator_type=TPU_V5_LITEPOD",
      "--accelerator_count=4",
    ],
    "2x2",
  ),
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
    "args": ["--strategy=tpu", "--tpu=local", "--require_accelerator=tpu"],
  }


@pytest.mark.parametrize("shape,topology", TPU_SHAPES)
def test_tpu_jobs_refuse_a_prebuilt_image(shape, topology):
  # Vertex has no prebuilt TensorFlow TPU training image in the supported
  # range, and pip would put the CPU/GPU wheel over tensorflow-tpu.
  del topology
  result = launch(
    *BASE,
    *shape,
    "--executor_image_uri=us-docker.pkg.dev/vertex-ai/training/"
    "tf-tpu.2-15.cp310:latest",
    "--dry_run",
  )
  assert result.returncode == 2, result.stdout
  assert "runs this package's TPU image (Dockerfile.tpu" in result.stderr
  assert _one_line(result.stderr)


def test_tpu_strategy_given_with_a_space_is_understood():
  shape = TPU_SHAPES[1][0]
  result = launch(
    *BASE,
    *shape,
    f"--container_image={TPU_IMAGE}",
    "--dry_run",
    "--",
    "--strategy",
    "tpu",
    "--tpu",
    "local",
  )
  assert result.returncode == 0, result.stderr
  args = json.loads(result.stdout)["jobSpec"]["workerPoolSpecs"][0][
    "containerSpec"
  ]["args"]
  # Passed through as given, nothing added twice.
  assert args == [
    "--strategy",
    "tpu",
    "--tpu",
    "local",
    "--require_accelerator=tpu",
  ]


@pytest.mark.parametrize(
  "shape,expected",
  [
    (
      [
        "--machine_type=g2-standard-8",
        "--accelerator_type=NVIDIA_L4",
        "--accelerator_count=1",
      ],
      ["--require_accelerator=gpu"],
    ),
    (["--machine_type=n1-standard-8"], []),
  ],
)
def test_require_accelerator_follows_the_pool(shape, expected):
  result = launch(*BASE, *shape, "--dry_run", "--", "--epochs=2")
  assert result.returncode == 0, result.stderr
  args = json.loads(result.stdout)["jobSpec"]["workerPoolSpecs"][0][
    "pythonPackageSpec"
  ]["args"]
  assert args == ["--epochs=2", *expected]


def test_an_explicit_require_accelerator_is_kept_and_checked():
  gpu = [
    "--machine_type=g2-standard-8",
    "--accelerator_type=NVIDIA_L4",
    "--accelerator_count=1",
  ]
  kept = launch(*BASE, *gpu, "--dry_run", "--", "--require_accelerator=none")
  assert kept.returncode == 0, kept.stderr
  args = json.loads(kept.stdout)["jobSpec"]["workerPoolSpecs"][0][
    "pythonPackageSpec"
  ]["args"]
  assert args == ["--require_accelerator=none"]
  wrong = launch(*BASE, *gpu, "--dry_run", "--", "--require_accelerator=tpu")
  assert wrong.returncode == 2 and "--require_accelerator=tpu" in wrong.stderr
  cpu = launch(*BASE, "--dry_run", "--", "--require_accelerator=gpu")
  assert cpu.returncode == 2 and "has no GPU" in cpu.stderr


GPU_IMAGE = "us-central1-docker.pkg.dev/proj/repo/alexnet-tf:2.21"


def test_container_image_sends_container_spec_and_uploads_nothing(gcs):
  shape = [
    "--machine_type=a2-highgpu-2g",
    "--accelerator_type=NVIDIA_TESLA_A100",
    "--accelerator_count=2",
    "--workers=1",
    "--data_service_workers=2",
    f"--container_image={GPU_IMAGE}",
    "--display_name=container1",
  ]
  trainer = ["--", "--train_data=gs://bkt/data/train-*", "--epochs=3"]
  dry = launch(*BASE, *shape, "--dry_run", *trainer)
  assert dry.returncode == 0, dry.stderr
  env = {"STORAGE_EMULATOR_HOST": gcs.url}
  with FakeVertex() as vertex:
    result = launch(
      *BASE, *shape, f"--api_endpoint={vertex.url}", *trainer, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (post,) = [r for r in vertex.requests if r["method"] == "POST"]
  pools = _as_named_json(post["body"])["jobSpec"]["workerPoolSpecs"]
  assert pools == json.loads(dry.stdout)["jobSpec"]["workerPoolSpecs"]
  trainer_args = [
    "--train_data=gs://bkt/data/train-*",
    "--epochs=3",
    "--strategy=multi_worker",
    "--data_service=vertex",
    "--require_accelerator=gpu",
  ]
  for pool in pools[:2]:
    assert "pythonPackageSpec" not in pool
    assert pool["containerSpec"] == {
      "imageUri": GPU_IMAGE,
      "args": trainer_args,
    }
  # The input pool runs another module from the same image.
  assert pools[2]["containerSpec"] == {
    "imageUri": GPU_IMAGE,
    "command": ["python", "-m", "trainer.data_service"],
    "args": ["--role=vertex"],
  }
  assert "Uploading" not in result.stdout
  from google.auth.credentials import AnonymousCredentials
  from google.cloud import storage

  client = storage.Client(
    project="proj",
    credentials=AnonymousCredentials(),
    client_options={"api_endpoint": gcs.url},
  )
  assert not [
    b.name
    for b in client.list_blobs("bkt", prefix="staging/alexnet-tf/container1")
  ]


def test_container_image_and_executor_image_exclude_each_other():
  result = launch(
    *BASE,
    f"--container_image={GPU_IMAGE}",
    "--executor_image_uri=us-docker.pkg.dev/vertex-ai/training/x:latest",
  )
  assert result.returncode == 2
  assert (
    "--container_image" in result.stderr
    and "--executor_image_uri" in result.stderr
  )


def test_cloud_storage_fuse_paths_are_accepted():
  result = launch(
    *BASE,
    "--dry_run",
    "--",
    "--train_data=/gcs/bkt/data/train-*",
    "--eval_data=/gcs/bkt/data/validation-*",
    "--model_dir=/gcs/bkt/runs/fuse",
  )
  assert result.returncode == 0, result.stderr
  args = json.loads(result.stdout)["jobSpec"]["workerPoolSpecs"][0][
    "pythonPackageSpec"
  ]["args"]
  assert args == [
    "--train_data=/gcs/bkt/data/train-*",
    "--eval_data=/gcs/bkt/data/validation-*",
    "--model_dir=/gcs/bkt/runs/fuse",
  ]


def _one_line(stderr):
  lines = [l for l in stderr.splitlines() if l.strip()]
  return len(lines) == 1 and lines[0].startswith("Error: ")


def test_trainer_flag_typo_fails_before_anything_is_uploaded(gcs):
  env = {"STORAGE_EMULATOR_HOST": gcs.url}
  with FakeVertex() as vertex:
    result = launch(
      *BASE,
      "--display_name=typo",
      f"--api_endpoint={vertex.url}",
      "--",
      "--epocs=3",
      env=env,
    )
    assert vertex.requests == []
  assert result.returncode == 2
  assert _one_line(result.stderr), result.stderr
  assert "--epocs" in result.stderr or "'epocs'" in result.stderr
  assert "epochs" in result.stderr  # absl's suggestion
  from google.auth.credentials import AnonymousCredentials
  from google.cloud import storage

  client = storage.Client(
    project="proj",
    credentials=AnonymousCredentials(),
    client_options={"api_endpoint": gcs.url},
  )
  assert not [
    b.name for b in client.list_blobs("bkt", prefix="staging/alexnet-tf/typo")
  ]


@pytest.mark.parametrize(
  "args,fragment",
  [
    (
      [
        "--machine_type=n1-standard-8",
        "--accelerator_type=NVIDIA_L4",
        "--accelerator_count=1",
      ],
      "NVIDIA_L4 runs on g2-* machines",
    ),
    (
      [
        "--machine_type=a2-highgpu-2g",
        "--accelerator_type=NVIDIA_TESLA_A100",
        "--accelerator_count=4",
      ],
      "has 2 GPUs",
    ),
    (
      [
        "--machine_type=n1-standard-8",
        "--accelerator_type=NVIDIA_TESLA_T4",
        "--accelerator_count=3",
      ],
      "take 1, 2, 4 or 8",
    ),
    (
      [
        "--machine_type=cloud-tpu",
        "--accelerator_type=TPU_V3",
        "--accelerator_count=4",
      ],
      "takes 8 TPU cores",
    ),
    (["--workers=-1"], "--workers must be >= 0"),
    (
      ["--accelerator_type=NVIDIA_TESLA_V200", "--accelerator_count=1"],
      "is not one of",
    ),
    (["--workers=2", "--", "--strategy=mirrored"], "contradicts"),
    (["--", "--train_data=/home/me/data/train-*"], "is a local path"),
    (["--labels=Team=X"], "--labels"),
    (["--data_service_workers=-2"], "--data_service_workers must be >= 0"),
    (
      ["--data_service_workers=2", "--", "--data_service=grpc://h:5050"],
      "drop the trainer flag --data_service",
    ),
    (
      [
        "--machine_type=cloud-tpu",
        "--accelerator_type=TPU_V3",
        "--accelerator_count=8",
        f"--container_image={TPU_IMAGE}",
        "--data_service_workers=2",
      ],
      "--data_service_workers is not supported with TPU",
    ),
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
  ],
)
def test_bad_values_fail_before_anything_is_uploaded(args, fragment):
  result = launch(*BASE, *args)
  assert result.returncode == 2
  assert fragment in result.stderr and "Traceback" not in result.stderr
  assert _one_line(result.stderr), result.stderr


@pytest.mark.parametrize(
  "missing,message",
  [
    (
      "--base_output_dir",
      "--base_output_dir is required: a gs:// path for the job's outputs",
    ),
    (
      "--staging_bucket",
      "--staging_bucket is required: a gs:// path for the package "
      "and Vertex's staging files",
    ),
    ("--project", "--project is required"),
  ],
)
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


# --- Hyperparameter tuning ----------------------------------------------------

TUNE = [
  "--tune",
  "--metric=val_accuracy",
  "--goal=maximize",
  "--param=learning_rate:double:1e-4:1e-2:log",
  "--param=global_batch_size:discrete:64,128,256",
  "--param=optimizer:categorical:adam,sgd",
  "--param=lr_constant_epochs:integer:2:10",
  "--max_trials=20",
  "--parallel_trials=4",
]
TUNE_TRAINER = [
  "--",
  "--train_data=gs://bkt/data/train-*",
  "--eval_data=gs://bkt/data/validation-*",
  "--epochs=20",
]


def test_tuning_job_sends_the_dry_run_request_with_the_custom_job_pools(gcs):
  shape = [
    "--machine_type=g2-standard-8",
    "--accelerator_type=NVIDIA_L4",
    "--accelerator_count=1",
    "--workers=1",
    "--spot",
    "--service_account=sa@proj.iam.gserviceaccount.com",
    "--labels=team=vision",
    "--display_name=tune1",
  ]
  dry = launch(*BASE, *shape, *TUNE, "--dry_run", *TUNE_TRAINER)
  assert dry.returncode == 0, dry.stderr
  expected = json.loads(dry.stdout)
  plain = launch(*BASE, *shape, "--dry_run", *TUNE_TRAINER)
  assert plain.returncode == 0, plain.stderr
  custom_job_spec = json.loads(plain.stdout)["jobSpec"]

  env = {"STORAGE_EMULATOR_HOST": gcs.url}
  with FakeVertex() as vertex:
    result = launch(
      *BASE,
      *shape,
      *TUNE,
      f"--api_endpoint={vertex.url}",
      "--wait",
      "--poll_secs=1",
      *TUNE_TRAINER,
      env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    posts = [r for r in vertex.requests if r["method"] == "POST"]
  assert len(posts) == 1
  assert posts[0]["path"].split("?")[0] == (
    "/v1/projects/proj/locations/us-central1/hyperparameterTuningJobs"
  )
  sent = _as_named_json(posts[0]["body"], "HyperparameterTuningJob")
  assert sent == expected
  # Negative control: the comparison sees a planted difference in what was sent.
  planted = json.loads(json.dumps(posts[0]["body"]))
  planted["studySpec"]["parameters"][1]["discreteValueSpec"]["values"][2] = 512
  assert _as_named_json(planted, "HyperparameterTuningJob") != expected

  assert expected["displayName"] == "tune1" and expected["labels"] == {
    "team": "vision"
  }
  assert expected["maxTrialCount"] == 20 and expected["parallelTrialCount"] == 4
  study = expected["studySpec"]
  assert study["metrics"] == [{"metricId": "val_accuracy", "goal": "MAXIMIZE"}]
  assert study["parameters"] == [
    {
      "parameterId": "learning_rate",
      "scaleType": "UNIT_LOG_SCALE",
      "doubleValueSpec": {"minValue": 1e-4, "maxValue": 1e-2},
    },
    {
      "parameterId": "global_batch_size",
      "scaleType": "UNIT_LINEAR_SCALE",
      "discreteValueSpec": {"values": [64, 128, 256]},
    },
    {
      "parameterId": "optimizer",
      "categoricalValueSpec": {"values": ["adam", "sgd"]},
    },
    {
      "parameterId": "lr_constant_epochs",
      "scaleType": "UNIT_LINEAR_SCALE",
      "integerValueSpec": {"minValue": "2", "maxValue": "10"},
    },
  ]
  # Every trial is the CustomJob launch.vertex would submit with the same
  # flags, its trainers also told which metric to report.
  trial = expected["trialJobSpec"]
  pools, custom_pools = (
    trial["workerPoolSpecs"],
    custom_job_spec["workerPoolSpecs"],
  )
  assert len(pools) == len(custom_pools) == 2
  for pool, custom_pool in zip(pools, custom_pools):
    args = pool["pythonPackageSpec"].pop("args")
    assert args.count("--hypertune_metric=val_accuracy") == 1
    args.remove("--hypertune_metric=val_accuracy")
    assert args == custom_pool["pythonPackageSpec"].pop("args")
    assert pool == custom_pool
  assert {k: v for k, v in trial.items() if k != "workerPoolSpecs"} == {
    k: v for k, v in custom_job_spec.items() if k != "workerPoolSpecs"
  }
  assert trial["scheduling"]["strategy"] == "SPOT"

  from google.auth.credentials import AnonymousCredentials
  from google.cloud import storage

  client = storage.Client(
    project="proj",
    credentials=AnonymousCredentials(),
    client_options={"api_endpoint": gcs.url},
  )
  assert client.bucket("bkt").get_blob(
    "staging/alexnet-tf/tune1/alexnet-tf-0.1.0.tar.gz"
  )
  assert "hyperparameterTuningJobs/4242" in result.stdout
  assert (
    "JOB_STATE_RUNNING" in result.stdout
    and "JOB_STATE_SUCCEEDED" in result.stdout
  )


def test_tuning_job_goal_and_algorithm_options():
  result = launch(
    *BASE,
    "--tune",
    "--metric=val_loss",
    "--param=dropout_rate:discrete:0.3,0.5",
    "--param=optimizer:categorical:adam,sgd",
    "--search_algorithm=grid",
    "--max_trials=4",
    "--max_failed_trials=2",
    "--dry_run",
  )
  assert result.returncode == 0, result.stderr
  request = json.loads(result.stdout)
  study = request["studySpec"]
  # The goal follows the metric unless given: a loss is minimized.
  assert study["metrics"] == [{"metricId": "val_loss", "goal": "MINIMIZE"}]
  assert study["algorithm"] == "GRID_SEARCH"
  assert request["maxTrialCount"] == 4 and request["parallelTrialCount"] == 1
  assert request["maxFailedTrialCount"] == 2
  args = request["trialJobSpec"]["workerPoolSpecs"][0]["pythonPackageSpec"][
    "args"
  ]
  assert args == ["--hypertune_metric=val_loss"]


def test_trial_values_override_the_trainer_flags_given():
  # Vertex appends each trial's values after the job's flags; the trainer
  # takes the last value of a flag, so a tuned flag may also be given.
  result = launch(
    *BASE,
    *TUNE,
    "--dry_run",
    "--",
    "--learning_rate=0.5",
    "--eval_data=gs://bkt/data/validation-*",
  )
  assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
  "args,fragment",
  [
    (
      ["--param=learning_rat:double:1e-4:1e-2"],
      "learning_rat is not a trainer flag",
    ),
    (
      ["--param=learning_rate:float:1e-4:1e-2"],
      "double, integer, discrete or categorical",
    ),
    (["--param=learning_rate:double:1e-4"], "NAME:double:MIN:MAX[:SCALE]"),
    (
      ["--param=learning_rate:double:1e-2:1e-4"],
      "MIN 0.01 must be < MAX 0.0001",
    ),
    (["--param=learning_rate:double:small:1e-2"], "'small' is not a number"),
    (
      ["--param=learning_rate:double:1e-4:1e-2:cubic"],
      "linear, log or reverse_log",
    ),
    (["--param=learning_rate:double:0:1e-2:log"], "log scale needs values > 0"),
    (["--param=learning_rate:double:0:1e-2"], "--learning_rate must be > 0"),
    (
      ["--param=dropout_rate:double:0.1:1.0"],
      "--dropout_rate must be in [0, 1)",
    ),
    (
      ["--param=global_batch_size:double:64:256"],
      "--global_batch_size takes whole numbers",
    ),
    (
      ["--param=global_batch_size:discrete:64,96.5"],
      "--global_batch_size takes whole numbers",
    ),
    (["--param=global_batch_size:discrete:64,64"], "64 is repeated"),
    (["--param=global_batch_size:discrete:64"], "at least 2 values"),
    (["--param=epochs:integer:1:1.5"], "'1.5' is not a whole number"),
    (["--param=optimizer:categorical:adam,rmsprop"], "rmsprop"),
    (["--param=optimizer:double:0:1"], "--optimizer takes categorical"),
    (
      [
        "--param=learning_rate:double:1e-4:1e-2",
        "--param=learning_rate:double:1e-3:1e-2",
      ],
      "--param=learning_rate is given twice",
    ),
    (["--param=model_dir:categorical:gs://a,gs://b"], "model_dir"),
    (
      ["--param=hypertune_metric:categorical:loss,accuracy"],
      "hypertune_metric",
    ),
    (["--metric=val_acc"], "--metric=val_acc is not one of"),
    (["--goal=up"], "--goal=up is not maximize or minimize"),
    (["--metric=val_loss", "--goal=maximize"], "val_loss is a loss"),
    (["--max_trials=0"], "--max_trials must be >= 1"),
    (
      ["--max_trials=4", "--parallel_trials=8"],
      "--parallel_trials=8 must be <= --max_trials=4",
    ),
    (["--max_failed_trials=-1"], "--max_failed_trials must be >= 0"),
    (["--search_algorithm=genetic"], "--search_algorithm=genetic"),
    (
      ["--search_algorithm=grid"],
      "grid search needs integer, discrete or categorical",
    ),
    (["--", "--train_data=gs://bkt/data/train-*"], "needs validation data"),
    (["--metric=val_auc", "--", "--num_classes=4"], "binary"),
    (["--", "--model_dir=gs://bkt/runs/one"], "each trial writes to its own"),
    (["--", "--hypertune_metric=loss"], "set by --metric"),
  ],
)
def test_bad_tuning_specs_fail_before_anything_is_uploaded(gcs, args, fragment):
  tune = [
    "--tune",
    "--metric=val_accuracy",
    "--param=learning_rate:double:1e-4:1e-2:log",
  ]
  # The case's own flags come last (absl keeps the last value of a flag); its
  # own --param replaces the default one.
  launcher_args, trainer_args = _split(args)
  if any(a.startswith("--param=") for a in launcher_args):
    tune = tune[:2]
  env = {"STORAGE_EMULATOR_HOST": gcs.url}
  with FakeVertex() as vertex:
    result = launch(
      *BASE,
      "--display_name=badtune",
      f"--api_endpoint={vertex.url}",
      *tune,
      *launcher_args,
      *trainer_args,
      env=env,
    )
    assert vertex.requests == []
  assert result.returncode == 2, result.stdout
  assert fragment in result.stderr and "Traceback" not in result.stderr, (
    result.stderr
  )
  assert _one_line(result.stderr), result.stderr
  from google.auth.credentials import AnonymousCredentials
  from google.cloud import storage

  client = storage.Client(
    project="proj",
    credentials=AnonymousCredentials(),
    client_options={"api_endpoint": gcs.url},
  )
  assert not list(client.list_blobs("bkt", prefix="staging/alexnet-tf/badtune"))


def _split(args):
  """(launcher flags, ["--", trainer flags...] or [])."""
  if "--" not in args:
    return args, []
  cut = args.index("--")
  return args[:cut], args[cut:]


@pytest.mark.parametrize(
  "args,message",
  [
    (["--param=learning_rate:double:1e-4:1e-2"], "--param needs --tune"),
    (
      ["--tune", "--param=learning_rate:double:1e-4:1e-2"],
      "--tune needs --metric: one of loss, accuracy, auc, val_loss, val_accuracy, val_auc",
    ),
    (
      ["--tune", "--metric=loss"],
      "--tune needs at least one --param=NAME:TYPE:VALUES",
    ),
  ],
)
def test_tuning_flags_need_each_other(args, message):
  result = launch(*BASE, *args, "--dry_run")
  assert result.returncode == 2
  assert result.stderr.strip() == f"Error: {message}"


@pytest.mark.parametrize("extra", [[], TUNE])
def test_submitting_never_imports_tensorflow(extra):
  command = probe_command(
    "cli:imports_tensorflow",
    "launch.vertex",
    *_with_an_image(BASE + extra),
    "--dry_run",
  )
  result = subprocess.run(
    command,
    cwd=REPO,
    env=cli_env("/tmp"),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert "NO_TF" in result.stdout, result.stdout + result.stderr
  assert '"workerPoolSpecs"' in result.stdout  # It got as far as the request.
  assert ('"studySpec"' in result.stdout) == bool(extra)
