"""Damaged shards, as an interrupted copy or a failing disk leaves them:
every command that reads records says which file in one line and exits 1,
and --skip_corrupt completes the run. Classic shards with no manifest, so
the trainer counts them first (where the damage used to surface as a
traceback)."""

import io
import os

from conftest import read_jsonl
import numpy as np
from PIL import Image
import pytest

from trainer import records

pytestmark = pytest.mark.multiprocess


def _shards(directory, num_shards=4, per_shard=64):
  rng = np.random.default_rng(0)
  os.makedirs(directory, exist_ok=True)
  paths = []
  for shard in range(num_shards):
    serialized = []
    for i in range(per_shard):
      label = i % 2
      pixels = np.full((36, 36, 3), 40 + 160 * label, np.uint8)
      pixels = (pixels + rng.integers(0, 30, pixels.shape)).astype(np.uint8)
      buffer = io.BytesIO()
      Image.fromarray(pixels).save(buffer, format="JPEG")
      serialized.append(
        records.image_example(
          buffer.getvalue(), label, 36, 36
        ).SerializeToString()
      )
    path = os.path.join(directory, records.shard_name("train", shard, 4))
    records.write_shard(path, serialized)
    paths.append(path)
  return paths


def _truncate(path):
  with open(path, "rb") as f:
    content = f.read()
  with open(path, "wb") as f:
    f.write(content[: len(content) // 2])


def _overwrite(path):
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(b"\xff" * 8)


def _text(path):
  with open(path, "w") as f:
    f.write("this is not a TFRecord file\n" * 100)


DAMAGE = {"truncated": _truncate, "overwritten": _overwrite, "text": _text}


def _train(run_cli, data_dir, model_dir, *extra, damaged_flag="train_data"):
  clean = os.path.join(str(data_dir) + "-clean", "train-*")
  pattern = os.path.join(data_dir, "train-*")
  train, evaluate = (
    (pattern, clean) if damaged_flag == "train_data" else (clean, pattern)
  )
  return run_cli(
    "trainer.task",
    "--config=tiny",
    f"--train_data={train}",
    f"--eval_data={evaluate}",
    "--epochs=1",
    "--precision=float32",
    "--export=false",
    f"--model_dir={model_dir}",
    *extra,
    timeout=600,
  )


@pytest.fixture
def damaged_set(tmp_path):
  def make(damage):
    data_dir = tmp_path / damage
    paths = _shards(data_dir)
    _shards(str(data_dir) + "-clean")
    DAMAGE[damage](paths[2])
    return data_dir, paths[2]

  return make


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("flag", ["train_data", "eval_data"])
def test_a_damaged_shard_is_one_line_naming_the_file(
  run_cli, damaged_set, tmp_path, damage, flag
):
  data_dir, damaged = damaged_set(damage)
  result = _train(run_cli, data_dir, tmp_path / "run", damaged_flag=flag)
  assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("Error:")]
  assert len(errors) == 1, result.stderr[-3000:]
  assert errors[0].startswith(f"Error: --{flag}: {damaged} is damaged ("), (
    errors
  )
  assert "--skip_corrupt" in errors[0]


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_skip_corrupt_completes_the_run_and_says_which_file(
  run_cli, damaged_set, tmp_path, damage
):
  data_dir, damaged = damaged_set(damage)
  result = _train(run_cli, data_dir, tmp_path / "run", "--skip_corrupt")
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  assert f"--train_data: {damaged} is damaged" in result.stdout
  assert read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]["epoch"] == 1


def test_an_empty_shard_is_a_valid_one(run_cli, tmp_path):
  paths = _shards(tmp_path / "empty")
  _shards(str(tmp_path / "empty") + "-clean")
  records.write_shard(paths[1], [])
  result = _train(run_cli, tmp_path / "empty", tmp_path / "run")
  assert result.returncode == 0, result.stderr[-3000:]


def test_evaluate_names_a_damaged_eval_shard(run_cli, damaged_set, tmp_path):
  data_dir, damaged = damaged_set("truncated")
  clean = os.path.join(str(data_dir) + "-clean", "train-*")
  trained = run_cli(
    "trainer.task",
    "--config=tiny",
    f"--train_data={clean}",
    f"--eval_data={clean}",
    "--epochs=1",
    "--precision=float32",
    "--export=false",
    f"--model_dir={tmp_path / 'run'}",
    timeout=600,
  )
  assert trained.returncode == 0, trained.stderr[-3000:]
  result = run_cli(
    "trainer.evaluate",
    f"--model_dir={tmp_path / 'run'}",
    f"--eval_data={data_dir}/train-*",
  )
  assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert f"Error: --eval_data: {damaged} is damaged (" in result.stderr


def test_prepare_verify_lists_the_damaged_files(run_cli, damaged_set):
  data_dir, damaged = damaged_set("truncated")
  result = run_cli("trainer.prepare", f"--verify={data_dir}/train-*")
  assert result.returncode == 1, result.stderr[-2000:]
  lines = result.stdout.splitlines()
  assert [l for l in lines if l.startswith("damaged:")] == [
    l for l in lines if l.startswith(f"damaged: {damaged} (")
  ] and any(l.startswith(f"damaged: {damaged} (") for l in lines), lines
  assert lines[-1].startswith("4 files, ") and lines[-1].endswith("1 damaged")
  clean = run_cli("trainer.prepare", f"--verify={data_dir}-clean/train-*")
  assert clean.returncode == 0, clean.stdout + clean.stderr[-2000:]
  assert clean.stdout.strip() == "4 files, 256 readable records, 0 damaged"


def test_prepare_index_counts_once_for_every_later_run(run_cli, tmp_path):
  _shards(tmp_path / "set")
  indexed = run_cli("trainer.prepare", f"--index={tmp_path}/set/train-*")
  assert indexed.returncode == 0, indexed.stderr[-2000:]
  assert indexed.stdout.startswith("256 records in 4 files: wrote ")
  trained = run_cli(
    "trainer.task",
    "--config=tiny",
    f"--train_data={tmp_path}/set/train-*",
    "--epochs=1",
    "--precision=float32",
    "--export=false",
    f"--model_dir={tmp_path / 'run'}",
    timeout=600,
  )
  assert trained.returncode == 0, trained.stderr[-2000:]
  assert "reading them to count their records" not in trained.stdout


def _with_manifest(directory, damaged):
  """Four shards and their manifest (no counting pass finds the damage
  first), shard `damaged` truncated. Returns the shards' paths."""
  paths = _shards(directory)
  shards = [{"file": os.path.basename(p), "num_examples": 64} for p in paths]
  records.write_manifest(
    str(directory), {"splits": {"train": {"shards": shards}}}
  )
  _truncate(paths[damaged])
  return paths


def _launch_local(run_cli, tmp_path, launcher, trainer):
  """launch.local with `launcher` flags, one tiny epoch on tmp_path/set."""
  return run_cli(
    "launch.local",
    *launcher,
    "--grace_secs=5",
    "--",
    "--config=tiny",
    *trainer,
    f"--train_data={tmp_path}/set/train-*",
    "--epochs=1",
    "--precision=float32",
    "--export=false",
    f"--model_dir={tmp_path / 'run'}",
    timeout=300,
  )


def test_on_two_workers_the_one_that_hits_it_names_it_and_the_job_stops(
  run_cli, tmp_path
):
  """Worker 1's share (files 1 and 3) holds the damage; the counts come from
  a manifest (no counting pass finds it first). Worker 1 says which file,
  the launcher stops worker 0: no hang."""
  paths = _with_manifest(tmp_path / "set", damaged=3)
  result = _launch_local(
    run_cli, tmp_path, ["--workers=2"], ["--strategy=multi_worker"]
  )
  assert result.returncode == 1, result.stdout[-3000:]
  assert (
    f"[worker 1] Error: --train_data: {paths[3]} is damaged (" in result.stdout
  ), result.stdout[-3000:]
  assert "Traceback" not in result.stdout


def test_through_the_data_service_the_line_names_the_file(run_cli, tmp_path):
  """The tf.data service's workers read the files; the trainer finds which
  one is damaged by reading them after the failure."""
  paths = _with_manifest(tmp_path / "set", damaged=1)
  result = _launch_local(
    run_cli, tmp_path, ["--workers=1", "--data_service_workers=1"], []
  )
  assert result.returncode == 1, result.stdout[-3000:]
  errors = [l for l in result.stdout.splitlines() if "Error:" in l]
  assert len(errors) == 1, result.stdout[-3000:]
  assert f"Error: --train_data: {paths[1]} is damaged (" in errors[0], errors
  assert "Traceback" not in result.stdout
