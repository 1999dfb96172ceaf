"""Exports a trained model for serving: `.keras` plus a SavedModel whose
default signature takes encoded images.

    serving_default(image_bytes: string[N]) ->
        probabilities: float32[N, C]   (C = 2 for a binary model)
        classes: string[N]             the most likely class name
        scores: float32[N]             its probability
    serve(image: float32[N, S, S, 3]) -> the Keras model's output

`image_bytes` takes JPEG, PNG, BMP or GIF bytes; in a Vertex AI / TF Serving
REST request send them as {"image_bytes": {"b64": "..."}}. Preprocessing is
exactly the evaluation pipeline's (data.decode_for_eval).
"""

import inspect
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from trainer import data
from trainer import faults

BYTES_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "serve"


def reduced_compute_dtype(saved_model_dir, signature=PIXELS_SIGNATURE):
  """'bfloat16' or 'float16' when `signature` of the SavedModel computes in
  it (exported with --export_precision=training), else None."""
  graph = tf.saved_model.load(saved_model_dir).signatures[signature].graph
  graph_def = graph.as_graph_def()
  nodes = [
    *graph_def.node,
    *(
      node
      for function in graph_def.library.function
      for node in function.node_def
    ),
  ]
  for dtype in (tf.bfloat16, tf.float16):
    if any(
      node.attr[key].type == dtype.as_datatype_enum
      for node in nodes
      for key in ("T", "DstT")
      if key in node.attr
    ):
      return dtype.name
  return None


def serving_function(model, image_size, augment, class_names):
  """The bytes-in, classes-out tf.function."""
  names = tf.constant(list(class_names))
  binary = model.output_shape[-1] == 1

  @tf.function(
    input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
  )
  def serve_bytes(image_bytes):
    images = tf.map_fn(
      lambda encoded: data.decode_for_eval(encoded, image_size, augment),
      image_bytes,
      fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8),
    )
    probabilities = tf.cast(model(images, training=False), tf.float32)
    if binary:
      probabilities = tf.concat([1.0 - probabilities, probabilities], axis=1)
    best = tf.argmax(probabilities, axis=1)
    return {
      "probabilities": probabilities,
      "classes": tf.gather(names, best),
      "scores": tf.reduce_max(probabilities, axis=1),
    }

  return serve_bytes


def export(model, run_dir, image_size, augment, class_names):
  """Writes the run's export: Keras model, SavedModel and class names (local
  or gs://), where `run_dir` (an outputs.RunDir) says. Returns the export dir."""
  tf.io.gfile.makedirs(run_dir.export)
  keras_path = run_dir.keras_model
  if "://" in keras_path:
    # Keras writes .keras archives with local zip I/O: stage, then copy.
    staging = tempfile.mkdtemp()
    staged = os.path.join(staging, os.path.basename(keras_path))
    model.save(staged)
    tf.io.gfile.copy(staged, keras_path, overwrite=True)
    shutil.rmtree(staging, ignore_errors=True)
  else:
    model.save(keras_path)
  faults.point("export:keras_written")
  # Not archive.track(model): the archive saves the variables its endpoints
  # use, and tracking the model as well stores every weight twice.
  archive = keras.export.ExportArchive()
  archive.add_endpoint(
    BYTES_SIGNATURE, serving_function(model, image_size, augment, class_names)
  )
  archive.add_endpoint(
    PIXELS_SIGNATURE,
    model.call,
    input_signature=[
      tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="image")
    ],
  )
  if "verbose" in inspect.signature(archive.write_out).parameters:
    # Keras 3.6+ lists every variable the endpoints capture unless told
    # not to; Keras 3.4 and 3.5 have no such argument.
    archive.write_out(run_dir.saved_model, verbose=False)
  else:
    archive.write_out(run_dir.saved_model)
  faults.point("export:saved_model_written")
  with tf.io.gfile.GFile(run_dir.export_class_names, "w") as f:
    f.write("\n".join(class_names) + "\n")
  return run_dir.export
