"""Gradient clipping (--clip_norm) and weight averaging (--ema_decay) under
one device, two mirrored replicas, two workers and a kill -9 resume."""

import json

import numpy as np
import pytest

from conftest import run_probe, run_workers
from resilience_test import _final_state, kill_9_after_checkpoint

pytestmark = pytest.mark.multiprocess

TINY = ["--config=tiny"]

# Helpers shared by the probes: the local copies of Keras variables.
READ = """
from trainer import optimization

def local(strategy, variable):
  return per_replica(strategy, getattr(variable, "value", variable))

def replicas_equal(strategy, variables):
  return all(np.array_equal(copies[0], c) for copies in
             (local(strategy, v) for v in variables) for c in copies)

def relative(a, b):
  a, b = (np.concatenate([np.ravel(x) for x in v]) for v in (a, b))
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))
"""

# Three more steps, one per call: the averages after them against numpy's,
# from the weights after each step (Keras' rule: the first step's weights,
# then decay x average + (1 - decay) x weights). Needs `trainer`, DECAY and
# `history` (the weights after the steps so far) and `result`.
EMA_CHECK = """
variables = trainer.model.trainable_variables
averages = optimization.weight_averages(trainer.optimizer)
iterator = trainer.train_iterator(0, 1)
for _ in range(3):
  trainer.train_steps(iterator, tf.constant(1), train_lib.requests_vector())
  history.append([local(strategy, v)[0] for v in variables])

def ema(decay):
  average = history[0]
  for weights in history[1:]:
    average = [decay * a + (1 - decay) * w for a, w in zip(average, weights)]
  return average

got = [local(strategy, a)[0] for a in averages]
result.update(ema_replicas=len(local(strategy, averages[0])),
              ema_error=relative(got, ema(DECAY)),
              ema_error_other_decay=relative(got, ema(0.8)),
              ema_error_raw=relative(got, history[-1]),
              ema_replicas_equal=replicas_equal(strategy, averages))
if len(local(strategy, averages[0])) > 1:
  # The control: one replica's copy planted off by 1e-3.
  strategy.experimental_local_results(averages[0].value)[1].assign_add(
      tf.fill(averages[0].shape, 1e-3))
  result["ema_replicas_equal_planted"] = replicas_equal(strategy, averages)
emit(**result)
"""


def check_ema(got, replicas):
  assert got["ema_replicas"] == replicas, got
  assert got["ema_error"] < 1e-6, got
  # Controls: another decay, or no averaging at all, is seen.
  assert got["ema_error_other_decay"] > 1e-3 and got["ema_error_raw"] > 1e-3, got
  assert got["ema_replicas_equal"], got
  if replicas > 1:
    assert not got["ema_replicas_equal_planted"], got


# Two replicas see different halves of one batch; the probe computes each
# replica's gradient, then takes the real step from the same weights, and
# compares the update with what the clipped sum (and the alternatives that
# would be wrong) give. Plain SGD: update = -learning_rate x gradient.
CLIP = READ + """
CLIP_NORM, LEARNING_RATE, DECAY = 0.05, 1.0, 0.9
trainer = train_lib.Trainer(tiny(
    strategy="mirrored", cpu_devices=2, precision=os.environ["PRECISION"],
    optimizer="sgd", momentum=0.0, learning_rate=LEARNING_RATE,
    lr_schedule="constant", dropout_rate=0.0, global_batch_size=16,
    deterministic=True, clip_norm=CLIP_NORM, ema_decay=DECAY))
strategy, model, optimizer = trainer.strategy, trainer.model, trainer.optimizer
variables = model.trainable_variables
images, labels, skipped = next(trainer.train_iterator(0, 0))
scale = 1.0
if hasattr(optimizer, "dynamic_scale"):
  # Small enough that no float16 gradient overflows (the step would be
  # skipped), large enough that clipping scaled gradients would show.
  optimizer.dynamic_scale.assign(256.0)
  scale = float(optimizer.dynamic_scale.numpy())
gradients = tf.function(lambda i, l: strategy.run(
    lambda i, l: trainer.compute_gradients(i, l)[2], args=(i, l)))(images, labels)
# [replica][variable], unscaled.
parts = [[np.asarray(x) / scale for x in copies] for copies in zip(
    *[strategy.experimental_local_results(g) for g in gradients])]
before = [local(strategy, v)[0] for v in variables]
tf.function(lambda: strategy.run(trainer.train_step,
                                 args=(images, labels, skipped)))()
update = [local(strategy, v)[0] - b for v, b in zip(variables, before)]

def norm(arrays):
  return float(np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in arrays)))

def clipped(arrays):
  return [a * min(1.0, CLIP_NORM / norm(arrays)) for a in arrays]

summed = [a + b for a, b in zip(*parts)]
expected = [-LEARNING_RATE * g for g in clipped(summed)]
per_replica_clipped = [-LEARNING_RATE * (a + b)
                       for a, b in zip(clipped(parts[0]), clipped(parts[1]))]
unclipped = [-LEARNING_RATE * g for g in summed]
history = [[local(strategy, v)[0] for v in variables]]
halves = [np.asarray(x) for x in strategy.experimental_local_results(images)]
result = dict(scale=scale, norms=[norm(summed), norm(parts[0]), norm(parts[1])],
              different_data=not np.array_equal(*halves),
              error=relative(update, expected),
              error_if_per_replica=relative(update, per_replica_clipped),
              error_if_unclipped=relative(update, unclipped),
              replicas_equal=replicas_equal(strategy, variables))
""" + EMA_CHECK


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_clip_norm_and_ema_under_two_mirrored_replicas(
    cache_dir, tmp_path, precision):
  """Both options on, loss-scaled or not: the clipped update, then the
  average after four steps, on both replicas."""
  got = run_probe(CLIP, cache_dir, tmp_path / "run", PRECISION=precision)
  assert got["different_data"], got
  # Clipping is active for the sum and for each replica's part.
  assert min(got["norms"]) > 0.05 * 2, got
  tolerance = 1e-4 if precision == "float32" else 1e-2
  assert got["error"] < tolerance, got
  # The controls: clipping each replica's gradient before the sum, or not
  # clipping at all, is a different update (and float16 clipping of the
  # still-scaled gradient would be 256 times smaller).
  assert got["error_if_per_replica"] > 0.05, got
  assert got["error_if_unclipped"] > 0.5, got
  assert got["replicas_equal"], got
  if precision == "mixed_float16":
    assert got["scale"] == 256.0, got
  check_ema(got, replicas=2)


EMA_STEPS = READ + """
DECAY = 0.9
trainer = train_lib.Trainer(tiny(strategy="one_device", global_batch_size=16,
                                 ema_decay=DECAY))
strategy, result = trainer.strategy, {}
trainer.train_steps(trainer.train_iterator(0, 0), tf.constant(1),
                    train_lib.requests_vector())
history = [[local(strategy, v)[0] for v in trainer.model.trainable_variables]]
""" + EMA_CHECK


def test_ema_follows_numpy_on_one_device(cache_dir, tmp_path):
  check_ema(run_probe(EMA_STEPS, cache_dir, tmp_path / "run"), replicas=1)


# One epoch with validation and export; then what each of them used.
EMA_OUTPUTS = READ + """
import keras
from trainer import evaluation, model as model_lib, outputs
trainer = train_lib.Trainer(tiny(epochs=1, steps_per_epoch=4, export=True,
                                 strategy="one_device", ema_decay=0.9))
summary = trainer.run()
strategy, model = trainer.strategy, trainer.model
exported = keras.models.load_model(trainer.run_dir.keras_model, custom_objects={
    "LocalResponseNormalization": model_lib.LocalResponseNormalization})
# The latest checkpoint: the raw weights and the average, as training left them.
trainer.checkpoints.restore_latest()
raw = [np.asarray(v) for v in model.trainable_variables]
average = [np.asarray(a) for a in optimization.weight_averages(trainer.optimizer)]
export = [np.asarray(v) for v in exported.trainable_variables]
same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(a, b))
recorded = outputs.read_metrics(trainer.model_dir)[-1]["val_loss"]
evaluated = trainer.evaluate()["loss"]
raw_after_evaluate = [np.asarray(v) for v in model.trainable_variables]
raw_evaluated = evaluation.evaluate(
    strategy, trainer.num_pipelines, trainer._eval_call, trainer.eval_spec,
    trainer.config.global_batch_size)["loss"]
trainer.checkpoints.restore_best()
best = [np.asarray(v) for v in model.trainable_variables]
emit(status=summary["status"],
     shapes_match=[a.shape for a in average] == [e.shape for e in export],
     export_is_average=same(export, average), export_is_raw=same(export, raw),
     best_is_average=same(best, average), best_is_raw=same(best, raw),
     recorded=recorded, evaluated=evaluated, raw_evaluated=raw_evaluated,
     raw_kept=same(raw_after_evaluate, raw))
"""


def test_validation_best_and_export_use_the_averaged_weights(cache_dir, tmp_path):
  got = run_probe(EMA_OUTPUTS, cache_dir, tmp_path / "run")
  assert got["status"] == "completed" and got["shapes_match"], got
  assert got["export_is_average"] and not got["export_is_raw"], got
  assert got["best_is_average"] and not got["best_is_raw"], got
  # The epoch's val_loss is the averaged weights' (the raw ones score
  # otherwise), and evaluating swaps the raw weights back bit for bit.
  assert got["evaluated"] == pytest.approx(got["recorded"], rel=1e-6), got
  assert got["raw_evaluated"] != pytest.approx(got["recorded"], rel=1e-3), got
  assert got["raw_kept"], got


# Worker 1 plants a difference in its average after training: the digest
# must see it (the negative control of the equality).
EMA_WORKERS = READ + """
import hashlib
trainer = train_lib.Trainer(tiny(strategy="multi_worker", epochs=1,
                                 steps_per_epoch=4, ema_decay=0.9,
                                 collective_timeout_secs=60))
summary = trainer.run()
averages = optimization.weight_averages(trainer.optimizer)

def digest():
  h = hashlib.sha256()
  for a in averages:
    h.update(np.asarray(a).tobytes())
  return h.hexdigest()

clean = digest()
if os.environ["WORKER_INDEX"] == "1":
  averages[0].assign(averages[0] + 1e-3)
emit(status=summary["status"], weights=summary["weights_sha256"],
     average=clean, planted=digest())
"""


def test_two_workers_hold_the_same_average(cache_dir, tmp_path):
  results = run_workers(EMA_WORKERS, cache_dir, tmp_path / "mw", timeout=240)
  assert [r["status"] for r in results] == ["completed", "completed"], results
  assert results[0]["weights"] == results[1]["weights"], results
  assert results[0]["average"] == results[1]["average"], results
  assert results[0]["planted"] != results[1]["planted"], results


def test_kill_9_resume_continues_the_same_average(tmp_path, cache_dir, run_cli):
  common = [*TINY, "--deterministic", "--epochs=2", "--checkpoint_every_steps=4",
            "--steps_per_call=2", "--precision=float32", "--export=false",
            "--ema_decay=0.9", "--clip_norm=1.0"]
  run_cli("trainer.task", *common, f"--model_dir={tmp_path / 'a'}", check=True)
  interrupted_dir = tmp_path / "b"
  # Mid-epoch 1 (16 steps per epoch): step 12 is saved, then the kill lands.
  kill_9_after_checkpoint(common, interrupted_dir, 12, cache_dir)
  assert json.loads((interrupted_dir / "status.json").read_text())["status"] == "running"
  resumed = run_cli("trainer.task", *common, f"--model_dir={interrupted_dir}",
                    check=True)
  assert "Resumed from" in resumed.stdout
  a, b = _final_state(tmp_path / "a"), _final_state(interrupted_dir)
  assert int(a["step/.ATTRIBUTES/VARIABLE_VALUE"]) == 32
  assert a.keys() == b.keys()
  differing = sorted(k for k in a if not np.array_equal(a[k], b[k]))
  assert not differing, differing  # Bit for bit, the averages included.
  # The checkpoint holds the averages: keys are positional, so find each
  # kernel's by value (near the kernel; Adam's moments are not).
  kernels = [k for k in a if k.startswith("optimizer/_trainable_variables/")
             and a[k].ndim >= 2]
  averages = [k for k in a if k.startswith("optimizer/_variables/") and any(
      a[k].shape == a[w].shape and
      np.linalg.norm(a[k] - a[w]) < 0.2 * np.linalg.norm(a[w]) for w in kernels)]
  assert len(kernels) == len(averages) == 4, (kernels, averages)
  # The control: the same comparison sees one average off by one ulp.
  planted = dict(b, **{averages[0]: np.nextafter(b[averages[0]], np.inf)})
  assert [k for k in a if not np.array_equal(a[k], planted[k])] == averages[:1]


def test_cli_records_and_lists_both_options(run_cli, tmp_path):
  model_dir = tmp_path / "cli"
  run_cli("trainer.task", *TINY, "--epochs=1", "--steps_per_epoch=2",
          "--clip_norm=2.5", "--ema_decay=0.99", f"--model_dir={model_dir}",
          check=True)
  config = json.loads((model_dir / "config.json").read_text())
  assert config["clip_norm"] == 2.5 and config["ema_decay"] == 0.99
  assert (model_dir / "export" / "model.keras").exists()
  helpshort = run_cli("trainer.task", "--helpshort", timeout=120).stdout
  assert "--clip_norm" in helpshort and "--ema_decay" in helpshort
  for flag, value in (("ema_decay", "1.0"), ("clip_norm", "-1")):
    bad = run_cli("trainer.task", *TINY, f"--{flag}={value}",
                  f"--model_dir={tmp_path / 'bad'}", timeout=120)
    assert bad.returncode != 0
    assert f"--{flag}" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
