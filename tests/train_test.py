"""The training step under every strategy and precision, in fresh processes.

Logical CPU devices and multi-worker clusters must be set up before
TensorFlow initialises, so each case runs in its own interpreter(s).
"""

import numpy as np
import pytest

from conftest import run_probe, run_workers

pytestmark = pytest.mark.multiprocess

# A Trainer whose chosen replica (of worker 1) gets an infinite gradient
# while the loss scale is at its initial value (so until the first skip): what
# a float16 overflow does to one replica.
OVERFLOW_ON_ONE_REPLICA = """
class OverflowOnce(train_lib.Trainer):
  def apply_gradients(self, gradients):
    context = tf.distribute.get_replica_context()
    poisoned = tf.logical_and(
        self.optimizer.dynamic_scale == 2.0 ** 15,
        tf.logical_and(context.replica_id_in_sync_group == REPLICA,
                       int(os.environ.get("WORKER_INDEX", "1")) == 1))
    factor = tf.where(poisoned, np.float32(np.inf), np.float32(1.0))
    super().apply_gradients([g * factor for g in gradients])

def weights(trainer):
  return {v.path: per_replica(trainer.strategy, v)
          for v in trainer.model.trainable_variables}

def compare(before, after):
  values = [x for replicas in after.values() for x in replicas]
  return {"finite": bool(all(np.all(np.isfinite(x)) for x in values)),
          "unchanged": bool(all(np.array_equal(a, b) for k in before
                                for a, b in zip(before[k], after[k]))),
          "replicas_equal": bool(all(np.array_equal(r[0], x) for r in after.values()
                                     for x in r))}
"""

MIRRORED_OVERFLOW = OVERFLOW_ON_ONE_REPLICA + """
REPLICA = 1
trainer = OverflowOnce(tiny(strategy="mirrored", cpu_devices=2,
                            precision="mixed_float16", global_batch_size=8))
scale = lambda: float(trainer.optimizer.dynamic_scale.numpy())
iterator = trainer.train_iterator(0, 0)
control = train_lib.requests_vector()
before, scale_before = weights(trainer), scale()
trainer.train_steps(iterator, tf.constant(1), control)
overflow_step = compare(before, weights(trainer))
scale_after_overflow = scale()
# A scale this small cannot overflow the tiny model's real gradients: the
# clean step must apply (so the check above could have failed).
trainer.optimizer.dynamic_scale.assign(16.0)
before = weights(trainer)
trainer.train_steps(iterator, tf.constant(1), control)
emit(overflow_step=overflow_step, clean_step=compare(before, weights(trainer)),
     scale_before=scale_before, scale_after_overflow=scale_after_overflow,
     scale_after_clean=scale())
"""


def test_float16_overflow_on_one_replica_skips_the_step_everywhere(
    cache_dir, tmp_path):
  got = run_probe(MIRRORED_OVERFLOW, cache_dir, tmp_path / "run")
  # The overflowing step is skipped on both replicas and the scale halves...
  assert got["overflow_step"] == {"finite": True, "unchanged": True,
                                  "replicas_equal": True}, got
  assert got["scale_after_overflow"] == got["scale_before"] / 2, got
  # ...and the next, clean step does update (the check above can fail).
  assert got["clean_step"] == {"finite": True, "unchanged": False,
                               "replicas_equal": True}, got
  assert got["scale_after_clean"] == 16.0, got


MULTI_WORKER_OVERFLOW = OVERFLOW_ON_ONE_REPLICA + """
REPLICA = 0
trainer = OverflowOnce(tiny(strategy="multi_worker", precision="mixed_float16",
                            global_batch_size=8, epochs=1, steps_per_epoch=4,
                            collective_timeout_secs=60))
summary = trainer.run()
emit(digest=summary["weights_sha256"], status=summary["status"],
     scale=float(trainer.optimizer.dynamic_scale.numpy()),
     finite=compare(weights(trainer), weights(trainer))["finite"])
"""


def test_float16_overflow_on_one_worker_finishes_with_identical_weights(
    cache_dir, tmp_path):
  results = run_workers(MULTI_WORKER_OVERFLOW, cache_dir, tmp_path / "mw",
                        timeout=240)
  assert [r["status"] for r in results] == ["completed", "completed"], results
  assert all(r["finite"] for r in results), results
  assert results[0]["digest"] == results[1]["digest"], results
  # The planted overflow halved the scale on both workers (real float16
  # overflows in the clean steps may halve it again, on both alike).
  assert results[0]["scale"] == results[1]["scale"] <= 2.0 ** 14, results


# Worker 1 may shift one kernel by 1e-3 on its own copy only, after the
# cluster synchronised the initial weights: a deliberately unsynchronised
# variable. The digests each worker prints must then differ.
DIGEST_OF_TRAINED_WEIGHTS = """
trainer = train_lib.Trainer(tiny(strategy="multi_worker", epochs=1,
                                 steps_per_epoch=4, export=True,
                                 collective_timeout_secs=60))
if os.environ.get("PERTURB") == "1":
  kernel = trainer.model.get_layer("predictions").kernel
  kernel.assign(kernel + 1e-3)
summary = trainer.run()
emit(digest=summary["weights_sha256"], status=summary["status"])
"""


@pytest.mark.parametrize("perturb", [False, True])
def test_worker_digests_are_of_the_weights_each_worker_trained(
    cache_dir, tmp_path, perturb):
  results = run_workers(DIGEST_OF_TRAINED_WEIGHTS, cache_dir, tmp_path / "mw",
                        env_per_worker=[{}, {"PERTURB": "1" if perturb else "0"}])
  assert [r["status"] for r in results] == ["completed", "completed"]
  digests = [r["digest"] for r in results]
  if perturb:  # The negative control: the check sees a planted difference.
    assert digests[0] != digests[1], results
  else:
    assert digests[0] == digests[1], results


# One replica's training and eval steps as the TPU path builds them - plain
# Adam (FusedAdam's kernel is CPU/GPU only), bfloat16 images and int32 labels
# from the TPU input function - run under tf.function(jit_compile=True) and
# without it, from the same weights. XLA draws other dropout masks than the
# CPU kernels from the same seed, so the comparison runs without dropout; a
# run with dropout shows that it compiles too.
XLA_STEPS = """
from trainer import data, evaluation, optimization
trainer = train_lib.Trainer(tiny(
    strategy="one_device", precision=os.environ["PRECISION"],
    dropout_rate=float(os.environ["DROPOUT"]), global_batch_size=16))
config, model, strategy = trainer.config, trainer.model, trainer.strategy
with strategy.scope():
  trainer.optimizer = optimization.build_optimizer(
      config, trainer.schedule, loss_scaling=False, fused=False)
  trainer.optimizer.build(model.trainable_variables)
context = tf.distribute.InputContext(1, 0, 1)
train_batches = list(data.make_train_dataset(
    data.for_strategy(trainer.train_spec, "tpu"), context, 16).take(2))
eval_batch = next(iter(data.make_eval_dataset(
    data.for_strategy(trainer.eval_spec, "tpu"), context, 16, steps=1)))
eval_step = evaluation.make_eval_step(model, config.num_classes, with_confusion=True)
checkpoint = tf.train.Checkpoint(model=model, optimizer=trainer.optimizer,
                                 **trainer.state.trackables())
start = checkpoint.write(os.path.join(os.environ["MODEL_DIR"], "start"))

def restore(lr_multiplier, bias_shift):
  checkpoint.read(start).assert_consumed()
  trainer.state.lr_multiplier.assign(lr_multiplier)
  bias = model.get_layer("predictions").bias
  bias.assign(bias + bias_shift)

def run(jit_compile, lr_multiplier=1.0, bias_shift=0.0):
  def compiled(fn):
    return tf.function(fn, jit_compile=jit_compile)
  restore(lr_multiplier, bias_shift)
  stats = strategy.run(compiled(eval_step), args=eval_batch).numpy()
  evaluated = [float(stats[0] / stats[2]), float(stats[1]), float(stats[2])]
  gradients = strategy.run(compiled(lambda images, labels: trainer.compute_gradients(
      images, labels)[2]), args=train_batches[0][:2])
  restore(lr_multiplier, bias_shift)
  # Two steps: the second one's loss is computed with the first's update.
  train_step, losses = compiled(trainer.train_step), []
  for batch in train_batches:
    stats = strategy.run(train_step, args=batch).numpy()
    losses.append(float(stats[0] / stats[2]))
  return {"losses": losses, "eval": evaluated, "gradients": np.concatenate(
      [np.ravel(g) for g in gradients]).tolist()}

if os.environ["DROPOUT"] != "0":
  emit(xla=run(True))
else:
  emit(dtypes=[b.dtype.name for b in train_batches[0] + eval_batch],
       xla=run(True), plain=run(False),
       xla_double_rate=run(True, lr_multiplier=2.0),
       xla_shifted_bias=run(True, bias_shift=1.0))
"""


def step_differences(a, b, rtol, forward_only=False):
  """What differs between two runs of the steps, beyond `rtol`.

  forward_only: the first step's loss and the evaluation (forward pass and
  loss), not the gradients and the loss after an update.
  """
  found = []
  steps = 1 if forward_only else len(b["losses"])
  if not np.allclose(a["losses"][:steps], b["losses"][:steps], rtol=rtol, atol=0):
    found.append(f"training losses {a['losses']} vs {b['losses']}")
  if not forward_only:
    gradients_a, gradients_b = np.asarray(a["gradients"]), np.asarray(b["gradients"])
    relative = (np.linalg.norm(gradients_a - gradients_b) /
                np.linalg.norm(gradients_b))
    if relative > rtol:
      found.append(f"gradients differ by {relative:.2g} (relative L2)")
  if not np.allclose(a["eval"], b["eval"], rtol=rtol, atol=0):
    found.append(f"eval loss, correct, count {a['eval']} vs {b['eval']}")
  return found


TPU_DTYPES = ["bfloat16", "int32", "int32", "bfloat16", "int32", "float32"]


def test_tpu_path_steps_compile_with_xla_and_match_in_float32(cache_dir, tmp_path):
  got = run_probe(XLA_STEPS, cache_dir, tmp_path / "run", PRECISION="float32",
                  DROPOUT="0")
  assert got["dtypes"] == TPU_DTYPES, got["dtypes"]
  # Measured here: losses and gradients agree to ~3e-6.
  assert step_differences(got["xla"], got["plain"], rtol=1e-4) == []
  # The controls: a doubled learning rate changes the second step's loss,
  # a shifted output bias every figure.
  doubled = step_differences(got["xla_double_rate"], got["plain"], rtol=1e-4)
  assert len(doubled) == 1 and doubled[0].startswith("training losses"), doubled
  assert len(step_differences(got["xla_shifted_bias"], got["plain"], 1e-4)) == 3


def test_tpu_path_steps_compile_with_xla_and_match_in_bfloat16(cache_dir, tmp_path):
  """Forward pass and loss only: in bfloat16 the gradients that flow back
  through BatchNorm (which cancels most of them) differ by up to ~15%
  between any two op orders, XLA's or the CPU kernels' - the built-in Keras
  layer as much as the fused one; above the first BatchNorm they agree to
  ~0.5%. The float32 test compares the gradients and the loss after an
  update."""
  got = run_probe(XLA_STEPS, cache_dir, tmp_path / "run",
                  PRECISION="mixed_bfloat16", DROPOUT="0")
  assert got["dtypes"] == TPU_DTYPES, got["dtypes"]
  assert np.all(np.isfinite(got["xla"]["losses"]))
  # Measured here: first loss ~1e-3 apart, evaluation ~2e-5.
  assert step_differences(got["xla"], got["plain"], 1e-2, forward_only=True) == []
  # The control: the output bias shifted by 1 moved the first loss by 4-24%
  # and the evaluation's by 18% in runs here.
  assert step_differences(got["xla_shifted_bias"], got["plain"], 1e-2,
                          forward_only=True)


def test_tpu_path_steps_with_dropout_compile_with_xla(cache_dir, tmp_path):
  got = run_probe(XLA_STEPS, cache_dir, tmp_path / "run", PRECISION="float32",
                  DROPOUT="0.5")
  assert np.all(np.isfinite(got["xla"]["losses"])), got["xla"]
  gradients = np.asarray(got["xla"]["gradients"])
  assert np.all(np.isfinite(gradients)) and np.linalg.norm(gradients) > 0
