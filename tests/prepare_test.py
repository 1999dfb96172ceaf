"""`python -m trainer.prepare` on messy, real-world-shaped inputs."""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time

from conftest import REPO
from conftest import cli_env
from conftest import probe_command
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from trainer import shards

pytestmark = pytest.mark.multiprocess


def _image_bytes(fmt, mode="RGB", size=(60, 40), value=120):
  buffer = io.BytesIO()
  pixels = np.random.default_rng(value).integers(
    0, 255, (size[1], size[0], 3), dtype=np.uint8
  )
  image = Image.fromarray(pixels).convert(mode)
  image.save(buffer, format=fmt)
  return buffer.getvalue()


def make_messy_folder(root):
  """PetImages-shaped: Cat/ and Dog/, with the kinds of junk the real set has."""
  cat, dog = root / "Cat", root / "Dog"
  cat.mkdir(parents=True)
  dog.mkdir()
  for i in range(3):
    (cat / f"{i}.jpg").write_bytes(_image_bytes("JPEG", value=i))
    (dog / f"{i}.jpg").write_bytes(_image_bytes("JPEG", value=10 + i))
  (cat / "empty.jpg").write_bytes(b"")
  (cat / "truncated.jpg").write_bytes(
    _image_bytes("JPEG", size=(200, 200))[:900]
  )
  (cat / "png_named.jpg").write_bytes(_image_bytes("PNG"))
  (cat / "cmyk.jpg").write_bytes(_image_bytes("JPEG", mode="CMYK"))
  (cat / "gray.jpg").write_bytes(_image_bytes("JPEG", mode="L"))
  (cat / "Thumbs.db").write_bytes(b"this is not an image at all")
  (dog / "bitmap.bmp").write_bytes(_image_bytes("BMP"))
  (dog / "anim.gif").write_bytes(_image_bytes("GIF", mode="P"))
  (dog / "notes.txt").write_text("hello")
  # usable: cat 3 + png + cmyk + gray = 6, dog 3 + bmp + gif = 5; skipped: 4
  return root


def read_all(pattern):
  files = shards.list_files(pattern, "x")
  out = []
  for record in tf.data.TFRecordDataset(list(files)):
    example = tf.train.Example.FromString(record.numpy())
    feature = example.features.feature
    image = tf.io.decode_jpeg(feature["image/encoded"].bytes_list.value[0])
    assert image.shape[-1] == 3
    assert feature["image/height"].int64_list.value[0] == image.shape[0]
    out.append((feature["image/class/label"].int64_list.value[0], image.shape))
  return out


def run_prepare(*args, cache_dir, timeout=300):
  return subprocess.run(
    [sys.executable, "-m", "trainer.prepare", *args],
    cwd=REPO,
    env=cli_env(cache_dir),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_messy_folder_exact_counts(tmp_path, cache_dir):
  source = make_messy_folder(tmp_path / "PetImages")
  out = tmp_path / "out"
  result = run_prepare(
    f"--source=folder:{source}",
    f"--out={out}",
    "--validation_fraction=0.2",
    "--num_shards=2",
    cache_dir=cache_dir,
  )
  assert result.returncode == 0, result.stderr
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["class_names"] == ["Cat", "Dog"]
  splits = manifest["splits"]
  train = splits["train"]
  assert (
    f"train: {train['num_examples']} images in 2 shards {train['per_class']}"
    in result.stdout
  )
  total = {
    c: splits["train"]["per_class"].get(c, 0)
    + splits["validation"]["per_class"].get(c, 0)
    for c in ("Cat", "Dog")
  }
  assert total == {"Cat": 6, "Dog": 5}
  assert (
    splits["train"]["num_examples"] + splits["validation"]["num_examples"] == 11
  )
  skipped = manifest["skipped"]
  assert skipped["count"] == 4
  assert {os.path.basename(s["file"]) for s in skipped["files"]} == {
    "empty.jpg",
    "truncated.jpg",
    "Thumbs.db",
    "notes.txt",
  }
  assert skipped["by_reason"]["empty file"] == 1
  assert "Skipped 4 unreadable file(s)" in result.stdout
  assert sorted(os.listdir(out)) == sorted(
    [
      "manifest.json",
      "train-00000-of-00002",
      "train-00001-of-00002",
      "validation-00000-of-00002",
      "validation-00001-of-00002",
    ]
  )
  rows = read_all(str(out / "train-*")) + read_all(str(out / "validation-*"))
  assert len(rows) == 11 and sorted(l for l, _ in rows) == [0] * 6 + [1] * 5
  assert manifest["image_size"]["height"]["max"] == 40


def test_split_is_deterministic_and_resize_applies(tmp_path, cache_dir):
  source = make_messy_folder(tmp_path / "src")
  outputs = []
  for name in ("a", "b"):
    result = run_prepare(
      f"--source=folder:{source}",
      f"--out={tmp_path / name}",
      "--resize_to=20",
      "--num_shards=1",
      cache_dir=cache_dir,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / name / "manifest.json").read_text())
    outputs.append(manifest["splits"]["validation"]["per_class"])
    assert manifest["image_size"]["height"]["max"] == 20  # shorter side
  assert outputs[0] == outputs[1]


def test_flat_kaggle_folder(tmp_path, cache_dir):
  source = tmp_path / "kaggle"
  source.mkdir()
  for i in range(4):
    (source / f"cat.{i}.jpg").write_bytes(_image_bytes("JPEG", value=i))
    (source / f"dog.{i}.jpg").write_bytes(_image_bytes("JPEG", value=9 + i))
  result = run_prepare(
    f"--source=folder:{source}",
    f"--out={tmp_path / 'o'}",
    "--validation_fraction=0.25",
    "--num_shards=1",
    cache_dir=cache_dir,
  )
  assert result.returncode == 0, result.stderr
  manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
  assert manifest["class_names"] == ["cat", "dog"]
  assert manifest["splits"]["validation"]["per_class"] == {"cat": 1, "dog": 1}


def test_nothing_usable_exits_non_zero(tmp_path, cache_dir):
  for name in ("A", "B"):
    (tmp_path / "junk" / name).mkdir(parents=True)
    (tmp_path / "junk" / name / "x.jpg").write_bytes(b"")
  result = run_prepare(
    f"--source=folder:{tmp_path / 'junk'}",
    f"--out={tmp_path / 'o'}",
    cache_dir=cache_dir,
  )
  assert result.returncode == 1
  assert "no usable images" in result.stderr
  assert not (tmp_path / "o" / "manifest.json").exists()


def _shard_digests(directory):
  return {
    path.name: hashlib.sha256(path.read_bytes()).hexdigest()
    for path in sorted(directory.glob("*-of-*"))
  }


def test_folder_shards_mix_classes_in_a_seeded_order(tmp_path, cache_dir):
  source = tmp_path / "three"
  for label, name in enumerate(("ant", "bee", "cat")):
    (source / name).mkdir(parents=True)
    for i in range(40):
      (source / name / f"{i}.jpg").write_bytes(
        _image_bytes("JPEG", size=(16, 16), value=100 * label + i)
      )
  runs = {}
  for name, seed in (("a", 0), ("b", 0), ("other_seed", 1)):
    out = tmp_path / name
    result = run_prepare(
      f"--source=folder:{source}",
      f"--out={out}",
      "--validation_fraction=0.25",
      "--num_shards=2",
      f"--split_seed={seed}",
      cache_dir=cache_dir,
    )
    assert result.returncode == 0, result.stderr
    runs[name] = _shard_digests(out)
  for shard in sorted((tmp_path / "a").glob("*-of-*")):
    labels = sorted({label for label, _ in read_all(str(shard))})
    assert labels == [0, 1, 2], f"{shard.name} holds only classes {labels}"
  # Reproducible (a re-run after a crash must rebuild the same shards) ...
  assert runs["a"] == runs["b"]
  # ... and the comparison can tell a different order apart.
  assert set(runs["a"]) == set(runs["other_seed"])
  assert all(runs["a"][n] != runs["other_seed"][n] for n in runs["a"])


def test_killed_run_leaves_no_whole_looking_shard_and_rerun_finishes(
  tmp_path, cache_dir
):
  out = tmp_path / "syn"
  args = [
    "--source=synthetic",
    f"--out={out}",
    "--num_shards=40",
    "--workers=1",
  ]
  process = subprocess.Popen(
    [sys.executable, "-m", "trainer.prepare", *args],
    cwd=REPO,
    env=cli_env(cache_dir),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 240
  while time.time() < deadline and not list(out.glob("train-*-of-00040")):
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (out / "manifest.json").exists()
  finished = sorted(out.glob("train-*-of-00040"))
  assert 0 < len(finished) < 40
  for shard in finished:  # every shard under a final name is whole
    assert sum(1 for _ in tf.data.TFRecordDataset(str(shard))) > 0
  result = run_prepare(*args, cache_dir=cache_dir)
  assert result.returncode == 0, result.stderr
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["splits"]["train"]["num_examples"] == 2048
  assert manifest["splits"]["validation"]["num_examples"] == 512
  assert len(read_all(str(out / "train-*"))) == 2048


def test_tfds_source_with_seed_split(tmp_path, cache_dir):
  # trainer.prepare's flags would clash with other modules' in this process.
  command = probe_command("prepare:tfds_cats_vs_dogs", tmp_path / "cvd")
  result = subprocess.run(
    command,
    cwd=REPO,
    env=cli_env(cache_dir),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  manifest = json.loads(result.stdout.strip().splitlines()[-1])
  assert manifest["class_names"] == ["cat", "dog"]
  assert set(manifest["splits"]) == {"train", "validation"}
  assert manifest["splits"]["train"]["num_examples"] == 12
  assert len(read_all(str(tmp_path / "cvd" / "train-*"))) == 12


def _run_measuring_peak_rss_mb(args, log_path, cache_dir, timeout=180):
  """Runs a child process; returns (exit code, its peak RSS in MB)."""
  with open(log_path, "w") as log:
    process = subprocess.Popen(
      args,
      cwd=REPO,
      env=cli_env(cache_dir),
      stdout=log,
      stderr=subprocess.STDOUT,
    )
  deadline = time.time() + timeout
  while True:
    pid, status, usage = os.wait4(process.pid, os.WNOHANG)
    if pid:
      break
    if time.time() > deadline:
      process.kill()
      process.wait()
      raise AssertionError(f"{args} did not finish in {timeout}s")
    time.sleep(0.1)
  process.returncode = os.waitstatus_to_exitcode(status)
  return process.returncode, usage.ru_maxrss / 1024  # ru_maxrss is in KiB


def test_tfds_source_streams_in_bounded_memory(tmp_path, cache_dir):
  peak_mb = {}
  for num_examples in (50, 200):  # per split: 38 MB and 154 MB of images
    out = tmp_path / f"n{num_examples}"
    log = tmp_path / f"n{num_examples}.log"
    code, peak_mb[num_examples] = _run_measuring_peak_rss_mb(
      probe_command("prepare:tfds_large_images", num_examples, out),
      log,
      cache_dir,
    )
    assert code == 0, log.read_text()[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    for split in ("train", "validation"):
      assert manifest["splits"][split]["num_examples"] == num_examples
  print(f"peak RSS: {peak_mb}")
  assert peak_mb[200] <= 1.2 * peak_mb[50], peak_mb


def test_shard_count_rule(cache_dir):
  result = subprocess.run(
    probe_command("prepare:shard_counts"),
    cwd=REPO,
    env=cli_env(cache_dir),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  # ~150 MiB each; 10 per reader; never an empty shard.
  assert result.stdout.split()[-3:] == ["700", "40", "5"]


def test_many_classes_print_a_summary_line(tmp_path, cache_dir):
  """Above 20 classes, each split is one short line (fewest and most
  images per class), not the whole per-class dict; the manifest keeps it.
  (test_messy_folder_exact_counts: 2 classes still print theirs.)"""
  for index in range(30):
    folder = tmp_path / "src" / f"class{index:02d}"
    folder.mkdir(parents=True)
    for image in range(1 + index % 3):
      (folder / f"{image}.jpg").write_bytes(
        _image_bytes("JPEG", size=(8, 8), value=index * 3 + image)
      )
  result = run_prepare(
    f"--source=folder:{tmp_path / 'src'}",
    f"--out={tmp_path / 'out'}",
    "--validation_fraction=0",
    cache_dir=cache_dir,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  (line,) = [l for l in result.stdout.splitlines() if l.startswith("train:")]
  assert line.startswith("train: 60 images in "), line
  assert line.endswith(
    " shards, 30 classes, 1-3 images each (fewest: class00, most: class02)"
  ), line
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert len(manifest["splits"]["train"]["per_class"]) == 30
