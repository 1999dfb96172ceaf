"""The training step under every strategy and precision, in fresh processes.

Logical CPU devices and multi-worker clusters must be set up before
TensorFlow initialises, so each case runs in its own interpreter(s).
"""

import pytest

from conftest import run_probe, run_workers

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
  # One overflow halved the scale on both workers (4 clean steps don't regrow it).
  assert results[0]["scale"] == results[1]["scale"] == 2.0 ** 14, results


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
