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


def serving_function(model, image_size, augment, class_names):
  """The bytes-in, classes-out tf.function."""
  names = tf.constant(list(class_names))
  binary = model.output_shape[-1] == 1

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string,
                                              name="image_bytes")])
  def serve_bytes(image_bytes):
    images = tf.map_fn(
        lambda encoded: data.decode_for_eval(encoded, image_size, augment),
        image_bytes, fn_output_signature=tf.TensorSpec(
            [image_size, image_size, 3], tf.uint8))
    probabilities = tf.cast(model(images, training=False), tf.float32)
    if binary:
      probabilities = tf.concat([1.0 - probabilities, probabilities], axis=1)
    best = tf.argmax(probabilities, axis=1)
    return {"probabilities": probabilities,
            "classes": tf.gather(names, best),
            "scores": tf.reduce_max(probabilities, axis=1)}

  return serve_bytes


def export(model, export_dir, image_size, augment, class_names):
  """Writes export_dir/model.keras and export_dir/saved_model (local or gs://)."""
  tf.io.gfile.makedirs(export_dir)
  keras_path = os.path.join(export_dir, "model.keras")
  if "://" in keras_path:
    # Keras writes .keras archives with local zip I/O: stage, then copy.
    staging = tempfile.mkdtemp()
    model.save(os.path.join(staging, "model.keras"))
    tf.io.gfile.copy(os.path.join(staging, "model.keras"), keras_path,
                     overwrite=True)
    shutil.rmtree(staging, ignore_errors=True)
  else:
    model.save(keras_path)
  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint("serving_default",
                       serving_function(model, image_size, augment, class_names))
  archive.add_endpoint("serve", model.call, input_signature=[tf.TensorSpec(
      [None, image_size, image_size, 3], tf.float32, name="image")])
  saved_model_dir = os.path.join(export_dir, "saved_model")
  if "verbose" in inspect.signature(archive.write_out).parameters:
    # Keras 3.6+ lists every variable the endpoints capture unless told
    # not to; Keras 3.4 and 3.5 have no such argument.
    archive.write_out(saved_model_dir, verbose=False)
  else:
    archive.write_out(saved_model_dir)
  with tf.io.gfile.GFile(os.path.join(export_dir, "class_names.txt"), "w") as f:
    f.write("\n".join(class_names) + "\n")
  return export_dir
