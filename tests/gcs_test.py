"""gs:// end to end against a local Cloud Storage emulator (tests/gcs_emulator.py):
prepare -> train -> checkpoint -> resume -> export, all through tf.io.gfile,
checked with the real google-cloud-storage client."""

import glob
import json
import os

import gcs_emulator
import pytest

pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  with gcs_emulator.running(str(tmp_path_factory.mktemp("gcs"))) as emulator:
    emulator.create_bucket("alexnet-test")
    yield emulator


def _blobs(gcs, prefix):
  return gcs.blobs("alexnet-test", prefix)


def test_prepare_train_checkpoint_export_on_gcs(gcs, run_cli):
  data = "gs://alexnet-test/data"
  prepared = run_cli(
    "trainer.prepare",
    "--source=synthetic",
    f"--out={data}",
    "--synthetic_examples=256,64",
    "--synthetic_size=37",
    "--num_shards=4",
    env=gcs.env,
    timeout=300,
  )
  assert prepared.returncode == 0, prepared.stderr[-3000:]
  blobs = _blobs(gcs, "data/")
  assert "data/manifest.json" in blobs and "data/train-00003-of-00004" in blobs
  assert not [name for name in blobs if ".tmp-" in name]

  model_dir = "gs://alexnet-test/runs/1"
  args = [
    "--config=tiny",
    f"--train_data={data}/train-*",
    f"--eval_data={data}/validation-*",
    f"--model_dir={model_dir}",
    "--checkpoint_every_steps=4",
  ]
  first = run_cli("trainer.task", *args, "--epochs=1", env=gcs.env, timeout=400)
  assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
  second = run_cli(
    "trainer.task", *args, "--epochs=2", env=gcs.env, timeout=400
  )
  assert second.returncode == 0, second.stderr[-3000:]
  assert (
    "Resumed from gs://alexnet-test/runs/1/checkpoints/ckpt-8" in second.stdout
  )

  blobs = _blobs(gcs, "runs/1/")
  for name in (
    "config.json",
    "status.json",
    "metrics.jsonl",
    "checkpoints/checkpoint",
    "best/checkpoint",
    "export/model.keras",
    "export/saved_model/saved_model.pb",
  ):
    assert f"runs/1/{name}" in blobs, sorted(blobs)
  assert any(n.startswith("runs/1/logs/train/events") for n in blobs)
  metrics = [
    json.loads(l)
    for l in blobs["runs/1/metrics.jsonl"].download_as_text().splitlines()
  ]
  assert [m["epoch"] for m in metrics] == [1, 2]
  status = json.loads(blobs["runs/1/status.json"].download_as_text())
  assert status["status"] == "completed"


LISTING_PROBE = """
import sys
from trainer import data
from trainer import shards
files = shards.list_files(sys.argv[1], "train_data")
assert len(files) == 1024, len(files)
assert shards.known_counts(files, None) == (1,) * 1024
print("LISTED", flush=True)
names, subdirectories = shards.list_directory(sys.argv[2])
assert subdirectories == ["cat", "dog"], subdirectories
for name in subdirectories:
  assert len(shards.list_directory(sys.argv[2] + "/" + name)[0]) == 20
print("WALKED", flush=True)
"""


def test_start_up_and_folder_walk_make_no_request_per_file(gcs, cache_dir):
  """1024 shards on gs:// are listed, and their counts read, in a handful of
  requests, as is a folder of class sub-folders: none per file (each is a
  network round trip). Control: the proxy's log does count requests (a
  call per file shows)."""
  import subprocess
  import sys

  from conftest import REPO
  from conftest import cli_env
  from google.auth.credentials import AnonymousCredentials
  from google.cloud import storage

  bucket = storage.Client(
    project="test",
    credentials=AnonymousCredentials(),
    client_options={"api_endpoint": gcs.url},
  ).bucket("alexnet-test")
  shards = []
  for index in range(1024):
    name = f"train-{index:05d}-of-01024"
    bucket.blob(f"many/{name}").upload_from_string(b"")
    shards.append({"file": name, "num_examples": 1})
  bucket.blob("many/manifest.json").upload_from_string(
    json.dumps({"splits": {"train": {"shards": shards}}})
  )
  for class_name in ("cat", "dog"):
    for index in range(20):
      bucket.blob(f"folder/{class_name}/{index}.jpg").upload_from_string(b"x")
  before = len(gcs.requests())

  def python(*argv):
    """`python -c` with the stand-in's environment."""
    return subprocess.run(
      [sys.executable, "-c", *argv],
      cwd=REPO,
      env=cli_env(cache_dir, **gcs.env),
      capture_output=True,
      text=True,
      timeout=300,
    )

  result = python(
    LISTING_PROBE, "gs://alexnet-test/many/train-*", "gs://alexnet-test/folder"
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "WALKED" in result.stdout
  made = gcs.requests()[before:]
  print(f"requests: {len(made)}")
  assert 0 < len(made) < 30, made
  # The control: one metadata call per file is a request per file.
  checked = python(
    "import sys, tensorflow as tf\n"
    "for i in range(40): tf.io.gfile.isdir(f'gs://alexnet-test/many/train-{i:05d}-of-01024')"
  )
  assert checked.returncode == 0, checked.stderr[-2000:]
  assert len(gcs.requests()) - before - len(made) >= 40


TRANSIENT_PROBE = """
import hashlib, sys
import tensorflow as tf
from trainer import config as config_lib
from trainer import data
from trainer import shards
config = config_lib.Config(
  skip_corrupt=True, num_classes=2, seed=3, deterministic=True
)
spec = data.make_input_spec(sys.argv[1], "train_data", config, image_size=16)
print("COUNTS", spec.file_counts, flush=True)
digest = hashlib.sha256()
context = tf.distribute.InputContext(1, 0, 1)
for images, labels, *_ in data.make_train_dataset(spec, context, 8).take(
  spec.num_examples // 8
):
  digest.update(images.numpy().tobytes() + labels.numpy().tobytes())
print("DIGEST", digest.hexdigest(), flush=True)
"""


def _upload_set(gcs, prefix, num_files, per_file):
  """data_test's records written locally, uploaded to alexnet-test/PREFIX/;
  returns the file names."""
  import data_test

  local = data_test.write_set(
    os.path.join(gcs.directory, prefix), num_files, per_file
  )
  bucket = gcs.bucket("alexnet-test")
  names = [os.path.basename(path) for path in sorted(glob.glob(local))]
  for name in names:
    bucket.blob(f"{prefix}/{name}").upload_from_filename(
      os.path.join(os.path.dirname(local), name)
    )
  return names


def test_transient_storage_errors_are_retried_not_skipped(gcs, cache_dir):
  """503s from Cloud Storage while counting and reading (the first tries of
  one shard) are retried by TensorFlow's GCS client: --skip_corrupt counts
  and reads exactly the records of a run with no failures, and nothing is
  reported damaged. Control: the stand-in did answer 503s."""
  import subprocess
  import sys

  from conftest import REPO
  from conftest import cli_env

  names = _upload_set(gcs, "transient", 4, 8)

  def probe():
    return subprocess.run(
      [
        sys.executable,
        "-c",
        TRANSIENT_PROBE,
        "gs://alexnet-test/transient/train-*",
      ],
      cwd=REPO,
      env=cli_env(cache_dir, **gcs.env),
      capture_output=True,
      text=True,
      timeout=300,
    )

  clean = probe()
  assert clean.returncode == 0, clean.stderr[-3000:]
  assert "COUNTS (8, 8, 8, 8)" in clean.stdout

  def results(run):
    return [l for l in run.stdout.splitlines() if l[:6] in ("COUNTS", "DIGEST")]

  # Without counts beside the shards the failures hit the count; with
  # them, the training read.
  for counts_beside in (False, True):
    if counts_beside:
      gcs.bucket("alexnet-test").blob(
        "transient/record_counts.json"
      ).upload_from_string(
        json.dumps({"records_per_file": {n: 8 for n in names}})
      )
    failed_before = len(gcs.answered(503))
    gcs.fail_next("train-00001-of-00004", times=3)
    troubled = probe()
    assert troubled.returncode == 0, troubled.stderr[-3000:]
    failed = gcs.answered(503)[failed_before:]
    assert len(failed) == 3, failed  # The control: they did fail.
    assert results(troubled) == results(clean), failed
    assert "damaged" not in troubled.stderr


def test_storage_that_stays_down_is_one_line_and_a_restart(gcs, run_cli):
  """Past TensorFlow's GCS retries (2 here, GCS_RETRY_CONFIG_MAX_RETRIES) a
  shard that keeps answering 503 ends the run with one line and exit 69
  (EX_UNAVAILABLE: a restart resumes it), not a traceback nor a
  damaged-data line."""
  _upload_set(gcs, "down", 2, 8)
  gcs.fail_next("train-00001-of-00002", times=10000)
  result = run_cli(
    "trainer.task",
    "--config=tiny",
    "--train_data=gs://alexnet-test/down/train-*",
    "--epochs=1",
    "--export=false",
    "--precision=float32",
    "--model_dir=gs://alexnet-test/runs/down",
    env={
      **gcs.env,
      "GCS_RETRY_CONFIG_MAX_RETRIES": "2",
      "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "1000",
      "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "10000",
    },
    timeout=300,
  )
  assert result.returncode == 69, result.stdout[-2000:] + result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("Error:")]
  assert len(errors) == 1, result.stderr[-3000:]
  assert "storage or another worker stopped answering" in errors[0]
  assert " is damaged (" not in errors[0]
