"""trainer.evaluate at ImageNet's class count: it finishes in bounded memory,
writes the numbers first and compactly, and draws only what a person can
read; stdout is a summary. A tiny model on 32x32 images with random labels:
what is measured here is the evaluation's own cost, not accuracy."""

import io
import json
import os
import subprocess
import sys
import threading
import time

from conftest import REPO
from conftest import cli_env
import numpy as np
from PIL import Image
import pytest

from trainer import records

pytestmark = pytest.mark.multiprocess


def _write_set(directory, num_classes, num_examples, num_shards, seed):
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  labels = np.arange(num_examples) % num_classes
  per_shard = -(-num_examples // num_shards)
  for shard in range(num_shards):
    serialized = []
    for label in labels[shard * per_shard : (shard + 1) * per_shard]:
      buffer = io.BytesIO()
      pixels = rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(buffer, format="JPEG")
      serialized.append(
        records.image_example(
          buffer.getvalue(), int(label), 36, 36
        ).SerializeToString()
      )
    records.write_shard(
      os.path.join(directory, records.shard_name("train", shard, num_shards)),
      serialized,
    )
  return os.path.join(directory, "train-*")


def _peak_rss_mib(module, args, cache_dir, timed_lines=None):
  """Runs `python -m module args`; returns (result, its peak RSS in MiB).
  With a list as `timed_lines`, appends (seconds since start, line) for each
  line of stdout as it comes."""
  script = (
    "import resource, runpy, sys\n"
    f"sys.argv = [{module!r}, *{list(args)!r}]\n"
    "try:\n"
    f"  runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
    "finally:\n"
    "  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "  print(f'PEAK_RSS_KIB {peak}', file=sys.stderr)\n"
  )
  started = time.monotonic()
  with subprocess.Popen(
    [sys.executable, "-c", script],
    cwd=REPO,
    env=cli_env(cache_dir),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  ) as process:
    stderr = []
    reader = threading.Thread(
      target=lambda: stderr.append(process.stderr.read())
    )
    reader.start()
    stdout = []
    for line in process.stdout:
      stdout.append(line)
      if timed_lines is not None:
        timed_lines.append((time.monotonic() - started, line.rstrip("\n")))
    process.wait(timeout=600)
    reader.join()
  result = subprocess.CompletedProcess(
    process.args, process.returncode, "".join(stdout), "".join(stderr)
  )
  peak = [l for l in result.stderr.splitlines() if l.startswith("PEAK_RSS")]
  assert peak, result.stderr[-3000:]
  return result, int(peak[-1].split()[1]) / 1024


def _train(tmp_path, cache_dir, num_classes):
  pattern = _write_set(
    tmp_path / f"data{num_classes}", num_classes, 2 * max(num_classes, 64), 8, 1
  )
  model_dir = tmp_path / f"run{num_classes}"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "trainer.task",
      "--config=tiny",
      f"--num_classes={num_classes}",
      f"--train_data={pattern}",
      f"--eval_data={pattern}",
      "--epochs=1",
      "--precision=float32",
      "--export=false",
      f"--model_dir={model_dir}",
    ],
    cwd=REPO,
    env=cli_env(cache_dir),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  return model_dir


@pytest.mark.cpu_budget(120)
def test_evaluate_at_1000_classes_is_bounded_compact_and_readable(
  tmp_path, cache_dir
):
  peaks = {}
  for num_classes in (2, 1000):
    model_dir = _train(tmp_path, cache_dir, num_classes)
    result, peaks[num_classes] = _peak_rss_mib(
      "trainer.evaluate", [f"--model_dir={model_dir}"], cache_dir
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = model_dir / "eval"
    report = json.loads((out / "evaluation.json").read_text())
    assert len(report["confusion_matrix"]) == max(2, num_classes)
    # One line per confusion row (not per cell).
    lines = (out / "evaluation.json").read_text().count("\n")
    assert lines < 12 * max(2, num_classes) + 100, lines
    if num_classes == 2:
      assert (out / "confusion_matrix.png").exists()
      assert "confusion matrix (rows: true" in result.stdout
      continue
    # A summary, not a 1000x1000 table; a picture a screen can show.
    assert not (out / "confusion_matrix.png").exists()
    assert len(result.stdout.splitlines()) < 60, len(result.stdout.splitlines())
    assert "worst classes" in result.stdout
    assert "most confused (true -> predicted)" in result.stdout
    assert len(report["worst_classes"]) == 10 and report["most_confused"]
    with Image.open(out / "class_summary.png") as picture:
      assert picture.size == (1400, 700)
  # Memory: 1000 classes within a small factor of 2 classes' (TensorFlow
  # itself is most of either).
  assert peaks[1000] < 1.5 * peaks[2], peaks
  print(f"peak RSS MiB: {peaks}")


@pytest.mark.cpu_budget(240)
def test_imagenet_shaped_set_trains_and_evaluates_end_to_end(
  tmp_path, cache_dir
):
  """ImageNet's shape at a small size: 1000 classes, 2 images each in 1024
  classic shards (no manifest, so the first run counts them), 1000
  validation images in 128 shards; the tiny model trains one epoch and
  trainer.evaluate reports. Counting happens once per data set: a second
  model dir reads the counts written beside the shards."""
  train = _write_set(tmp_path / "train", 1000, 2000, 1024, 1)
  validation = _write_set(tmp_path / "validation", 1000, 1000, 128, 2)
  figures = {}

  def train_in(name, *extra):
    lines = []
    result, peak = _peak_rss_mib(
      "trainer.task",
      [
        "--config=tiny",
        "--num_classes=1000",
        f"--train_data={train}",
        f"--eval_data={validation}",
        "--epochs=1",
        "--precision=float32",
        "--export=false",
        f"--model_dir={tmp_path / name}",
        *extra,
      ],
      cache_dir,
      lines,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (first_step,) = [t for t, l in lines if l.startswith("Training ")]
    return result, first_step, lines[-1][0], peak

  result, first_step, total, peak = train_in("first")
  assert result.stdout.count("reading them to count their records") == 2
  assert (tmp_path / "train" / "record_counts.json").exists()
  figures["first run: start-up to the first step, s"] = first_step
  figures["first run: total, s"] = total
  figures["first run: peak RSS, MiB"] = peak
  result, first_step, total, peak = train_in("second", "--steps_per_epoch=4")
  assert "reading them to count their records" not in result.stdout
  figures["second model dir: start-up to the first step, s"] = first_step

  lines = []
  started = time.monotonic()
  result, peak = _peak_rss_mib(
    "trainer.evaluate", [f"--model_dir={tmp_path / 'first'}"], cache_dir, lines
  )
  assert result.returncode == 0, result.stderr[-3000:]
  figures["evaluate: total, s"] = time.monotonic() - started
  figures["evaluate: peak RSS, MiB"] = peak
  report = json.loads(
    (tmp_path / "first" / "eval" / "evaluation.json").read_text()
  )
  assert report["num_examples"] == 1000
  assert len(report["confusion_matrix"]) == 1000
  assert (tmp_path / "first" / "eval" / "class_summary.png").exists()
  for name, value in figures.items():
    print(f"{name}: {value:.1f}")
