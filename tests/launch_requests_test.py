"""The launchers' request building, called as functions (no process, no
network): what launch.vertex would submit, and what it and launch.local
refuse before anything starts.

tests/vertex_test.py runs the same command end to end against a fake Vertex
server and fake-gcs-server; these are its fast counterparts."""

import datetime

import pytest

from launch import local
from launch import platforms
from launch import tuning
from launch import vertex
from launch import vertex_requests
from trainer.errors import UserError

# An image of the user's own (not one of Vertex's prebuilt ones, which are
# past their end of availability).
OWN_IMAGE = "us-central1-docker.pkg.dev/proj/repo/tf-2-21:1"
REQUIRED = dict(
  project="proj",
  staging_bucket="gs://bkt/staging",
  base_output_dir="gs://bkt/runs/1",
  executor_image_uri=OWN_IMAGE,
)
PREBUILT = (
  "us-docker.pkg.dev/vertex-ai/training/tf-{kind}.2-{minor}.py310:latest"
)


def _request(trainer_args, **options):
  options = vertex.default_options(**{**REQUIRED, **options})
  trainer = vertex.validate(options, trainer_args)
  return vertex_requests.job_request(options, trainer_args, "job1", trainer)


def test_gpu_job_runs_the_trainer_and_requires_the_gpu():
  request = _request(
    ["--strategy=mirrored", "--epochs=20"],
    machine_type="n1-standard-16",
    accelerator_type="NVIDIA_TESLA_V100",
    accelerator_count=4,
    spot=True,
    labels=["team=vision"],
  )
  (pool,) = request["jobSpec"]["workerPoolSpecs"]
  assert pool["machineSpec"] == {
    "machineType": "n1-standard-16",
    "acceleratorType": "NVIDIA_TESLA_V100",
    "acceleratorCount": 4,
  }
  program = pool["pythonPackageSpec"]
  assert program["executorImageUri"] == OWN_IMAGE
  assert program["pythonModule"] == "trainer.task"
  assert program["args"] == [
    "--strategy=mirrored",
    "--epochs=20",
    "--require_accelerator=gpu",
  ]
  assert request["jobSpec"]["scheduling"] == {"strategy": "SPOT"}
  assert request["jobSpec"]["baseOutputDirectory"] == {
    "outputUriPrefix": "gs://bkt/runs/1"
  }
  assert request["labels"] == {"team": "vision"}


def test_workers_and_data_service_get_their_own_pools():
  request = _request([], workers=2, data_service_workers=3)
  chief, workers, input_pool = request["jobSpec"]["workerPoolSpecs"]
  assert chief["replicaCount"] == "1" and workers["replicaCount"] == "2"
  assert workers["pythonPackageSpec"] == chief["pythonPackageSpec"]
  assert input_pool["replicaCount"] == "3"
  assert input_pool["pythonPackageSpec"]["pythonModule"] == (
    "trainer.data_service"
  )
  assert input_pool["machineSpec"] == {"machineType": "n1-highcpu-16"}


def test_tuning_request_wraps_the_custom_job():
  options = vertex.default_options(
    **REQUIRED,
    tune=True,
    metric="val_accuracy",
    max_trials=4,
    param=["learning_rate:double:1e-4:1e-2:log"],
    tuning_flags_given=["metric", "param", "max_trials"],
  )
  trainer_args = ["--epochs=3"]
  trainer = vertex.validate(options, trainer_args)
  parameters = tuning.validate(options, trainer_args, trainer)
  trial = vertex_requests.job_request(
    options, tuning.trial_trainer_args(options, trainer_args), "job1", trainer
  )
  request = tuning.job_request(options, parameters, trial)
  assert request["maxTrialCount"] == 4
  (metric,) = request["studySpec"]["metrics"]
  assert metric == {"metricId": "val_accuracy", "goal": "MAXIMIZE"}
  (parameter,) = request["studySpec"]["parameters"]
  assert parameter["parameterId"] == "learning_rate"
  assert parameter["scaleType"] == "UNIT_LOG_SCALE"
  args = request["trialJobSpec"]["workerPoolSpecs"][0]["pythonPackageSpec"][
    "args"
  ]
  assert "--hypertune_metric=val_accuracy" in args


@pytest.mark.parametrize(
  "trainer_args,options,fragment",
  [
    (["--epocs=3"], {}, "epocs"),
    (["--strategy=gpus"], {}, "--strategy"),
    (["--train_data=/local/train-*"], {}, "is a local path"),
    (["--strategy=mirrored"], dict(workers=2), "contradicts"),
    (["--require_accelerator=gpu"], {}, "the job has no GPU"),
    ([], dict(accelerator_type="NVIDIA_TESLA_T4"), "--accelerator_count >= 1"),
    (
      [],
      dict(
        accelerator_type="TPU_V3", accelerator_count=8, machine_type="cloud-tpu"
      ),
      "runs this package's TPU image (Dockerfile.tpu",
    ),
    ([], dict(labels=["Team=x"]), "--labels"),
    (
      ["--strategy=tpu"],
      dict(accelerator_type="NVIDIA_TESLA_T4", accelerator_count=1),
      "the job has no TPU",
    ),
    (["--strategy", "tpu"], {}, "the job has no TPU"),
  ],
)
def test_bad_values_are_one_line_before_anything_is_built(
  trainer_args, options, fragment
):
  with pytest.raises(vertex.LaunchError) as raised:
    vertex.validate(
      vertex.default_options(**{**REQUIRED, **options}), trainer_args
    )
  message = str(raised.value)
  assert fragment in message and "\n" not in message, message


def test_default_options_are_the_flags_defaults():
  options = vertex.default_options()
  assert options["region"] == "us-central1" and options["project"] is None
  assert options["max_trials"] == 10 and options["labels"] == []
  with pytest.raises(ValueError, match="epochs"):
    vertex.default_options(epochs=3)  # A trainer flag, not the launcher's.


@pytest.mark.parametrize(
  "trainer_args,num_workers,devices,fragment",
  [
    (["--strategy=tpu"], 2, "cpu", "2 workers as one multi_worker cluster"),
    (["--strategy=mirrored"], 1, "gpu", "runs one worker"),
    (["--require_accelerator=gpu"], 2, "cpu", "the workers run on CPUs"),
    (["--require_accelerator=tpu"], 2, "gpu", "the workers run on GPUs"),
    (["--epocs=3"], 2, "cpu", "epocs"),
  ],
)
def test_local_refuses_trainer_flags_its_workers_cannot_run(
  trainer_args, num_workers, devices, fragment
):
  with pytest.raises(UserError) as raised:
    local.check_trainer_flags(trainer_args, num_workers, devices)
  assert fragment in str(raised.value)


def test_local_accepts_what_its_workers_run():
  for args in ([], ["--strategy=multi_worker"], ["--strategy", "auto"]):
    local.check_trainer_flags(args, 2, "cpu")
  local.check_trainer_flags(["--require_accelerator=gpu"], 2, "gpu")


def test_without_an_image_the_job_runs_this_packages_own_build():
  """No prebuilt TensorFlow training image is available any more (the
  newest reached its end of availability on 2026-07-11): without an image
  flag the job runs this package's image, built from the Dockerfile (or
  Dockerfile.tpu on TPU pools) and tagged by content."""
  from launch import image_build

  options = vertex.default_options(
    **{**REQUIRED, "executor_image_uri": ""},
    accelerator_type="NVIDIA_TESLA_T4",
    accelerator_count=1,
  )
  vertex.validate(
    options, ["--config=cats_vs_dogs"], today=datetime.date(2026, 12, 6)
  )
  build = image_build.plan(options)
  assert build.dockerfile == "Dockerfile"
  assert build.image.startswith(
    "us-central1-docker.pkg.dev/proj/alexnet/alexnet-tf:"
  )
  newest = max(
    (i for i in platforms.VERTEX_TRAINING_IMAGES if i.accelerator == "gpu"),
    key=lambda i: tuple(map(int, i.tensorflow.split("."))),
  )
  assert newest.expired(datetime.date(2026, 12, 6))
  # TPU pools build Dockerfile.tpu.
  options.update(
    accelerator_type="TPU_V3", accelerator_count=8, machine_type="cloud-tpu"
  )
  vertex.validate(options, [], today=datetime.date(2026, 12, 6))
  assert image_build.plan(options).dockerfile == "Dockerfile.tpu"


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_prebuilt_images_are_refused_from_their_end_of_availability(kind):
  uri = PREBUILT.format(kind=kind, minor=17)
  options = vertex.default_options(**{**REQUIRED, "executor_image_uri": uri})
  with pytest.raises(
    vertex.LaunchError, match="end of availability 2026-07-11"
  ):
    vertex.validate(options, [], today=datetime.date(2026, 7, 11))
  with pytest.raises(vertex.LaunchError, match="omit --executor_image_uri"):
    vertex.validate(options, [], today=datetime.date(2026, 7, 11))
  # Negative control: the day before, the same image is accepted.
  vertex.validate(options, [], today=datetime.date(2026, 7, 10))
  # And one outside the package's TensorFlow range is refused even then.
  options["executor_image_uri"] = PREBUILT.format(kind=kind, minor=16)
  with pytest.raises(vertex.LaunchError, match="TensorFlow 2.16, outside"):
    vertex.validate(options, [], today=datetime.date(2026, 1, 1))
