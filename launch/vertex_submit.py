"""Submits launch.vertex's requests with google-cloud-aiplatform.

Uploads the package (package path), creates the CustomJob or the
HyperparameterTuningJob, says where to follow it, and with --wait follows
its state. The client is imported only here and only to submit, so building
and checking a request needs neither it nor TensorFlow.
"""

import datetime
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from launch import tuning
from launch import vertex_requests

TERMINAL_STATES = {
  "JOB_STATE_SUCCEEDED",
  "JOB_STATE_FAILED",
  "JOB_STATE_CANCELLED",
  "JOB_STATE_EXPIRED",
}


def submit_job(options, request, parameters, display_name):
  """Uploads the package unless a container holds the code, then submits
  `request` (a CustomJob, or with --tune a tuning job) and prints its name
  and where to follow it.

  Returns:
    The submitted job.
  """
  if not options["container_image"]:  # The container already holds the code.
    with tempfile.TemporaryDirectory() as scratch:
      uri = vertex_requests.package_uri(options, display_name)
      print(f"Uploading the package to {uri}", flush=True)
      upload(build_sdist(scratch), uri, options["project"])
  if options["tune"]:
    job = submit_tuning(options, request, parameters)
    print(f"Submitted {job.resource_name}", flush=True)
    print(
      f"Trials: gcloud ai hp-tuning-jobs describe {job.name} "
      f"--project={options['project']} --region={options['region']}",
      flush=True,
    )
  else:
    job = submit(options, request)
    print(f"Submitted {job.resource_name}", flush=True)
    print(
      f"Console: https://console.cloud.google.com/vertex-ai/locations/"
      f"{options['region']}/training/{job.name}/cpu?project="
      f"{options['project']}",
      flush=True,
    )
  return job


def build_sdist(out_dir):
  """Builds this package's sdist with setuptools; returns its path."""
  subprocess.run(
    [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", out_dir],
    cwd=vertex_requests.REPO,
    check=True,
    capture_output=True,
  )
  (path,) = glob.glob(os.path.join(out_dir, "*.tar.gz"))
  return path


def upload(local_path, gs_uri, project):
  from google.cloud import storage

  bucket, _, name = gs_uri[len("gs://") :].partition("/")
  credentials = None
  if os.environ.get("STORAGE_EMULATOR_HOST"):
    # A local emulator takes no credentials.
    from google.auth.credentials import AnonymousCredentials

    credentials = AnonymousCredentials()
  client = storage.Client(project=project, credentials=credentials)
  client.bucket(bucket).blob(name).upload_from_filename(local_path)


def _snake(name):
  return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _init_client(options):
  """aiplatform.init for this job; returns the staging bucket it uses."""
  from google.cloud import aiplatform

  # The client wants a staging bucket even when nothing is staged.
  staging_bucket = options["staging_bucket"] or options["base_output_dir"]
  init = {
    "project": options["project"],
    "location": options["region"],
    "staging_bucket": staging_bucket,
  }
  if options["api_endpoint"]:
    init["api_endpoint"] = options["api_endpoint"]
    init["api_transport"] = "rest"
    if options["api_endpoint"].startswith("http://"):
      from google.auth.credentials import AnonymousCredentials

      init["credentials"] = AnonymousCredentials()
  aiplatform.init(**init)
  return staging_bucket


def _custom_job(options, request, job_spec, staging_bucket):
  """aiplatform.CustomJob with the worker pools of `job_spec` (REST JSON)."""
  from google.cloud import aiplatform
  from google.cloud.aiplatform_v1.types import custom_job as custom_job_types

  spec = custom_job_types.CustomJobSpec.from_json(json.dumps(job_spec))
  return aiplatform.CustomJob(
    display_name=request["displayName"],
    worker_pool_specs=list(spec.worker_pool_specs),
    base_output_dir=options["base_output_dir"],
    labels=request.get("labels"),
    staging_bucket=staging_bucket,
  )


def _run_settings(options):
  """The job's run settings, as CustomJob.submit and
  HyperparameterTuningJob.run take them."""
  from google.cloud.aiplatform_v1.types import custom_job as custom_job_types

  return {
    "service_account": options["service_account"] or None,
    "network": options["network"] or None,
    "timeout": options["timeout_hours"] * 3600 or None,
    "restart_job_on_worker_restart": options["restart_job_on_worker_restart"],
    "tensorboard": options["tensorboard"] or None,
    "scheduling_strategy": (
      custom_job_types.Scheduling.Strategy.SPOT if options["spot"] else None
    ),
  }


def submit(options, request):
  """Creates the CustomJob with the real client; returns the job."""
  staging_bucket = _init_client(options)
  job = _custom_job(options, request, request["jobSpec"], staging_bucket)
  job.submit(**_run_settings(options))
  return job


def submit_tuning(options, request, parameters):
  """Creates the HyperparameterTuningJob with the real client; returns it."""
  from google.cloud import aiplatform

  staging_bucket = _init_client(options)
  trial = _custom_job(options, request, request["trialJobSpec"], staging_bucket)
  # HyperparameterTuningJob.run() puts the run settings on the trials' job
  # spec and creates the job, then blocks until the job ends (with
  # sync=False, in a thread the interpreter waits for at exit). Do the first
  # two the same way, without the wait.
  _apply_run_settings(trial.job_spec, _run_settings(options))
  job = aiplatform.HyperparameterTuningJob(
    display_name=request["displayName"],
    custom_job=trial,
    metric_spec={options["metric"]: tuning.goal(options).lower()},
    parameter_spec=tuning.sdk_parameters(parameters),
    max_trial_count=options["max_trials"],
    parallel_trial_count=options["parallel_trials"],
    max_failed_trial_count=options["max_failed_trials"],
    search_algorithm=tuning.SEARCH_ALGORITHMS[options["search_algorithm"]],
    measurement_selection="best",
    labels=request.get("labels"),
  )
  job._gca_resource = job.api_client.create_hyperparameter_tuning_job(
    parent=aiplatform.initializer.global_config.common_location_path(),
    hyperparameter_tuning_job=job._gca_resource,
  )
  return job


def _apply_run_settings(spec, settings):
  """Puts `settings` (`_run_settings`) on a CustomJobSpec, as
  HyperparameterTuningJob.run() would."""
  from google.cloud.aiplatform_v1.types import custom_job as custom_job_types
  from google.protobuf import duration_pb2

  if settings["service_account"]:
    spec.service_account = settings["service_account"]
  if settings["network"]:
    spec.network = settings["network"]
  if (
    settings["timeout"]
    or settings["restart_job_on_worker_restart"]
    or settings["scheduling_strategy"]
  ):
    spec.scheduling = custom_job_types.Scheduling(
      timeout=(
        duration_pb2.Duration(seconds=settings["timeout"])
        if settings["timeout"]
        else None
      ),
      restart_job_on_worker_restart=settings["restart_job_on_worker_restart"],
      strategy=settings["scheduling_strategy"],
    )
  if settings["tensorboard"]:
    spec.tensorboard = settings["tensorboard"]


def wait(job, poll_secs):
  """Prints state changes until the job ends; returns True on success."""
  last = None
  while True:
    state = job.state.name
    if state != last:
      print(f"{datetime.datetime.now():%H:%M:%S} {state}", flush=True)
      last = state
    if state in TERMINAL_STATES:
      return state == "JOB_STATE_SUCCEEDED"
    time.sleep(poll_secs)
