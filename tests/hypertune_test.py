"""trainer.hypertune: what a Vertex AI tuning trial reports, with the real
cloudml-hypertune library; and a trial run end to end, from launch.vertex's
trial flags to the metric file the tuning service reads."""

import json
import subprocess
import sys

from conftest import REPO
from conftest import cli_env
from conftest import probe_command
from conftest import read_jsonl
from conftest import run_workers
import pytest

from launch import trainer_flags
from trainer import hypertune
from trainer.errors import UserError

RECORD = {
  "epoch": 3,
  "step": 48,
  "loss": 0.61,
  "accuracy": 0.7,
  "val_loss": 0.58,
  "val_accuracy": 0.71875,
}


@pytest.fixture
def metric_file(tmp_path, monkeypatch):
  path = tmp_path / "hypertune" / "output.metrics"
  monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(path))
  monkeypatch.delenv("CLOUD_ML_TRIAL_ID", raising=False)
  return path


def _entries(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_outside_a_trial_nothing_is_reported(metric_file):
  hypertune.report("val_accuracy", RECORD)
  assert not metric_file.parent.exists()


def test_a_trial_reports_every_epoch_through_the_library(
  metric_file, monkeypatch
):
  monkeypatch.setenv("CLOUD_ML_TRIAL_ID", "11")
  hypertune.report("val_accuracy", RECORD)
  hypertune.report("val_accuracy", {**RECORD, "epoch": 4, "val_accuracy": 0.75})
  entries = _entries(metric_file)
  assert [
    (e["trial"], e["global_step"], e["val_accuracy"]) for e in entries
  ] == [("11", "3", "0.71875"), ("11", "4", "0.75")]


def test_a_trial_without_a_metric_reports_nothing(metric_file, monkeypatch):
  monkeypatch.setenv("CLOUD_ML_TRIAL_ID", "11")
  hypertune.report("", RECORD)
  assert not metric_file.parent.exists()


def test_a_metric_the_run_does_not_log_is_named(metric_file, monkeypatch):
  monkeypatch.setenv("CLOUD_ML_TRIAL_ID", "11")
  with pytest.raises(
    UserError, match="--hypertune_metric=val_auc: this run logs no val_auc"
  ):
    hypertune.report("val_auc", RECORD)


def test_a_trial_without_the_library_says_so(metric_file, monkeypatch):
  monkeypatch.setitem(
    sys.modules, "hypertune", None
  )  # What an absent package does.
  hypertune.require_reporter("val_accuracy")  # Not a trial: not needed.
  hypertune.report("val_accuracy", RECORD)
  monkeypatch.setenv("CLOUD_ML_TRIAL_ID", "11")
  for call in (
    lambda: hypertune.require_reporter("val_accuracy"),
    lambda: hypertune.report("val_accuracy", RECORD),
  ):
    with pytest.raises(UserError) as error:
      call()
    message = str(error.value)
    assert "cloudml-hypertune" in message and "trial 11" in message
    assert "\n" not in message


@pytest.mark.multiprocess
def test_the_trainer_stops_at_once_in_a_trial_without_the_library(tmp_path):
  result = subprocess.run(
    probe_command(
      "cli:without_package",
      "hypertune",
      "trainer.task",
      "--config=tiny",
      "--hypertune_metric=val_accuracy",
    ),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
    env=cli_env(
      str(tmp_path),
      CLOUD_ML_TRIAL_ID="5",
      AIP_MODEL_DIR=str(tmp_path / "model"),
    ),
  )
  assert result.returncode == 1
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
  assert "cloudml-hypertune" in lines[0]
  assert not (tmp_path / "model").exists()  # Stopped before training.


@pytest.mark.parametrize(
  "args,fragment",
  [
    (
      ["--hypertune_metric=val_acc"],
      "--hypertune_metric='val_acc' is not one of",
    ),
    (["--hypertune_metric=val_auc", "--num_classes=4"], "binary"),
  ],
)
def test_bad_hypertune_metric(args, fragment):
  with pytest.raises(UserError, match=None) as error:
    trainer_flags.parse(args)
  assert fragment in str(error.value)


def test_integer_flags_read_whole_numbers_written_as_floats():
  # Vertex AI passes discrete tuning values as floats ("128.0").
  config = trainer_flags.parse(
    ["--global_batch_size=128.0", "--epochs=3"]
  ).config
  assert config.global_batch_size == 128 and isinstance(
    config.global_batch_size, int
  )
  for bad in ("128.5", "1e400", "nan", "12x"):
    with pytest.raises(UserError, match="--global_batch_size"):
      trainer_flags.parse([f"--global_batch_size={bad}"])


def _trial_flags(tmp_path):
  """The trainer flags launch.vertex gives every trial of a tuning job."""
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.vertex",
      "--project=proj",
      "--staging_bucket=gs://bkt/staging",
      "--base_output_dir=gs://bkt/runs/tune",
      # An image of the user's own: Vertex's prebuilt ones are past their
      # end of availability.
      "--executor_image_uri=us-central1-docker.pkg.dev/proj/repo/tf-2-21:1",
      "--tune",
      "--metric=val_accuracy",
      "--param=learning_rate:double:1e-4:1e-2:log",
      "--param=global_batch_size:discrete:16,32",
      "--dry_run",
      "--",
      "--config=tiny",
      "--epochs=2",
      "--global_batch_size=32",
    ],
    cwd=REPO,
    env=cli_env(str(tmp_path)),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  (pool,) = json.loads(result.stdout)["trialJobSpec"]["workerPoolSpecs"]
  return pool["pythonPackageSpec"]["args"]


@pytest.mark.multiprocess
def test_a_trial_run_writes_the_metric_file_vertex_reads(run_cli, tmp_path):
  args = _trial_flags(tmp_path)
  assert args == [
    "--config=tiny",
    "--epochs=2",
    "--global_batch_size=32",
    "--hypertune_metric=val_accuracy",
  ]
  # As Vertex runs trial 7: its values appended to the flags (discrete ones
  # as floats; the last value of a flag wins), its own output dirs under the
  # job's base output dir.
  trial_args = [*args, "--learning_rate=0.002", "--global_batch_size=16.0"]
  trial_dir = tmp_path / "runs" / "tune" / "7"
  metric_file = tmp_path / "hypertune" / "output.metrics"
  env = {
    "CLOUD_ML_TRIAL_ID": "7",
    "CLOUD_ML_HP_METRIC_FILE": str(metric_file),
    "AIP_MODEL_DIR": str(trial_dir / "model"),
    "AIP_CHECKPOINT_DIR": str(trial_dir / "checkpoints"),
    "AIP_TENSORBOARD_LOG_DIR": str(trial_dir / "logs"),
  }
  run_cli("trainer.task", *trial_args, env=env, check=True)

  model_dir = trial_dir / "model"
  config = json.loads((model_dir / "config.json").read_text())
  assert config["learning_rate"] == 0.002 and config["global_batch_size"] == 16
  assert config["hypertune_metric"] == "val_accuracy"
  records = read_jsonl(model_dir / "metrics.jsonl")
  entries = _entries(metric_file)
  assert [e["trial"] for e in entries] == ["7", "7"]
  assert [e["global_step"] for e in entries] == ["1", "2"]  # The epoch.
  reported = [float(e["val_accuracy"]) for e in entries]
  assert reported == [r["val_accuracy"] for r in records]
  # Negative control: the same comparison against another logged metric fails.
  assert reported != [r["val_loss"] for r in records]

  # The same flags outside a trial report nothing.
  plain_dir = tmp_path / "plain"
  metric_file.unlink()
  run_cli(
    "trainer.task",
    *trial_args,
    "--epochs=1",
    env={
      "CLOUD_ML_HP_METRIC_FILE": str(metric_file),
      "AIP_MODEL_DIR": str(plain_dir),
    },
    check=True,
  )
  assert len(read_jsonl(plain_dir / "metrics.jsonl")) == 1
  assert not metric_file.exists()


@pytest.mark.multiprocess
def test_helpshort_lists_the_metric_flag(run_cli):
  result = run_cli("trainer.task", "--helpshort", timeout=120)
  text = result.stdout + result.stderr
  assert "--hypertune_metric: [Outputs] Vertex AI hyperparameter tuning" in text


@pytest.mark.multiprocess
def test_only_the_chief_of_a_multi_worker_trial_reports(cache_dir, tmp_path):
  files = [tmp_path / f"worker{i}" / "output.metrics" for i in range(2)]
  results = run_workers(
    "tuning:multi_worker_trial",
    cache_dir,
    tmp_path / "trial",
    timeout=300,
    env_per_worker=[
      {"CLOUD_ML_TRIAL_ID": "3", "CLOUD_ML_HP_METRIC_FILE": str(f)}
      for f in files
    ],
  )
  assert [r["status"] for r in results] == ["completed", "completed"]
  entries = _entries(files[0])
  assert [e["global_step"] for e in entries] == ["1", "2"]
  records = read_jsonl(tmp_path / "trial" / "metrics.jsonl")
  assert [float(e["val_loss"]) for e in entries] == [
    r["val_loss"] for r in records
  ]
  assert not files[1].exists()
