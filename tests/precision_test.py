"""Each precision trains, exports in float32 and serves, in this process.

`--precision=auto` picks bfloat16 on CPUs with AVX512_BF16 or AMX and
float32 on others, so every test here names its precision: they mean the
same on both CPU kinds. (tests/export_test.py converts the exports of every
precision to TFLite; tests/results_test.py serves and predicts with them.)"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import configs
from trainer import serving
from trainer import train as train_lib

PRECISIONS = ("float32", "mixed_bfloat16")
# The module's runs are trained once, by whichever test asks first.
pytestmark = pytest.mark.cpu_budget(20)


def _tiny(model_dir, cache_dir, **changes):
  return configs.get_config("tiny").replace(
    model_dir=str(model_dir),
    epochs=1,
    synthetic_train_examples=128,
    synthetic_eval_examples=64,
    checkpoint_every_steps=0,
    synthetic_dir=os.path.join(cache_dir, "alexnet_tf", "synthetic"),
    **changes,
  )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
  """runs(precision) -> (model_dir, summary, compute dtype while training,
  the trained weights as the run ended): one in-process epoch of the tiny
  config per precision, exported."""
  done = {}

  def get(precision):
    if precision not in done:
      model_dir = tmp_path_factory.mktemp(precision) / "run"
      trainer = train_lib.Trainer(
        _tiny(model_dir, cache_dir, precision=precision)
      )
      compute_dtype = trainer.model.get_layer("conv1").compute_dtype
      summary = trainer.run()
      done[precision] = (
        model_dir,
        summary,
        compute_dtype,
        trainer.model.get_weights(),
      )
      keras.mixed_precision.set_global_policy("float32")
    return done[precision]

  return get


@pytest.mark.cpu_budget(20)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_trains_in_its_precision_and_exports_in_float32(runs, precision):
  model_dir, summary, compute_dtype, _ = runs(precision)
  assert (
    compute_dtype
    == {"float32": "float32", "mixed_bfloat16": "bfloat16"}[precision]
  )
  assert summary["status"] == "completed" and summary["step"] == 4
  assert summary["exported"] == str(model_dir / "export")
  saved_model = str(model_dir / "export" / "saved_model")
  for signature in (serving.PIXELS_SIGNATURE, serving.BYTES_SIGNATURE):
    assert serving.reduced_compute_dtype(saved_model, signature) is None
  exported = keras.models.load_model(model_dir / "export" / "model.keras")
  assert {layer.dtype_policy.name for layer in exported.layers} == {"float32"}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_export_serves_the_trained_weights(runs, precision):
  """The float32 export holds exactly the weights trained in `precision`
  (mixed precision keeps its weights in float32) and the serving signature
  answers in float32."""
  model_dir, _, _, trained_weights = runs(precision)
  exported = keras.models.load_model(model_dir / "export" / "model.keras")
  assert len(exported.get_weights()) == len(trained_weights)
  for got, want in zip(exported.get_weights(), trained_weights):
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
  serve = tf.saved_model.load(str(model_dir / "export" / "saved_model"))
  image = tf.io.encode_jpeg(tf.zeros([32, 32, 3], tf.uint8))
  output = serve.signatures[serving.BYTES_SIGNATURE](
    image_bytes=tf.stack([image])
  )
  assert output["probabilities"].dtype == tf.float32
  np.testing.assert_allclose(
    output["probabilities"].numpy().sum(), 1.0, rtol=1e-6
  )


@pytest.mark.cpu_budget(20)
@pytest.mark.parametrize(
  "source,target",
  [("mixed_bfloat16", "float32"), ("float32", "mixed_bfloat16")],
)
def test_warm_start_from_a_run_in_another_precision(
  runs, tmp_path, cache_dir, source, target
):
  source_dir, _, _, _ = runs(source)
  trainer = train_lib.Trainer(
    _tiny(
      tmp_path / "fine_tuned",
      cache_dir,
      precision=target,
      init_from=str(source_dir),
      export=False,
    )
  )
  loaded = trainer.model.get_layer("conv1").kernel.numpy()
  exported = keras.models.load_model(source_dir / "export" / "model.keras")
  np.testing.assert_array_equal(
    loaded, exported.get_layer("conv1").kernel.numpy()
  )
  assert trainer.model.get_layer("conv1").compute_dtype == (
    "bfloat16" if target == "mixed_bfloat16" else "float32"
  )
  assert trainer.run()["status"] == "completed"
