"""trainer.evaluate at ImageNet's class count: it finishes in bounded memory,
writes the numbers first and compactly, and draws only what a person can
read; stdout is a summary. A tiny model on 32x32 images with random labels:
what is measured here is the evaluation's own cost, not accuracy."""

import io
import json
import os
import subprocess
import sys

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


def _peak_rss_mib(module, args, cache_dir):
  """Runs `python -m module args`; returns (result, its peak RSS in MiB)."""
  script = (
    "import resource, runpy, sys\n"
    f"sys.argv = [{module!r}, *{list(args)!r}]\n"
    "try:\n"
    f"  runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
    "finally:\n"
    "  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "  print(f'PEAK_RSS_KIB {peak}', file=sys.stderr)\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", script],
    cwd=REPO,
    env=cli_env(cache_dir),
    capture_output=True,
    text=True,
    timeout=600,
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
