"""Classify images: python -m trainer.predict MODEL IMAGE...

    python -m trainer.predict runs/demo photo.jpg 'more/*.png' gs://b/img/x.jpg
    python -m trainer.predict runs/demo/export/saved_model cat.jpg --json

MODEL is a model dir (its export/saved_model is used), or a SavedModel
directory. Images are files, globs or gs:// paths, sent through the
SavedModel's serving signature, so preprocessing is exactly evaluation's.
Each image gets its class name and probability; an unreadable image gets an
error line and the others still get answers (exit status 1 if any failed).
"""

import json
import os
import sys

from absl import app
from absl import flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
# Imports TensorFlow without its CUDA-probe and oneDNN start-up notices, so
# the command prints the same on every CPU kind.
from trainer import startup

startup.start_tensorflow()

import tensorflow as tf

from trainer.errors import describe

FLAGS = flags.FLAGS
flags.DEFINE_bool(
  "json", False, "One JSON object per image instead of a table."
)


def load_signature(model_path):
  """The bytes-in serving signature of a model dir or SavedModel dir."""
  from trainer import outputs

  candidates = [outputs.RunDir.of(model_path).saved_model, model_path]
  for path in candidates:
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
      return tf.saved_model.load(path).signatures["serving_default"], path
  raise FileNotFoundError(
    f"no SavedModel in {model_path} (looked for "
    f"{candidates[0]} and {candidates[1]})"
  )


def expand(patterns):
  """Paths for files, globs and gs:// patterns; a pattern matching nothing is
  kept as-is so it is reported."""
  paths = []
  for pattern in patterns:
    if any(c in pattern for c in "*?["):
      matches = sorted(tf.io.gfile.glob(pattern))
      paths.extend(matches or [pattern])
    else:
      paths.append(pattern)
  return paths


def predict(signature, paths):
  """One result dict per path: image, class, probability, probabilities; or
  image and error."""
  results = []
  for path in paths:
    try:
      with tf.io.gfile.GFile(path, "rb") as f:
        encoded = f.read()
      # Decoding eagerly first gives a clean message for a bad file; inside
      # the signature it would be a graph trace.
      tf.io.decode_image(encoded, channels=3, expand_animations=False)
      output = signature(image_bytes=tf.constant([encoded]))
    except (tf.errors.OpError, OSError) as e:
      results.append({"image": path, "error": describe(e)})
      continue
    results.append(
      {
        "image": path,
        "class": output["classes"].numpy()[0].decode(),
        "probability": float(output["scores"].numpy()[0]),
        "probabilities": [float(p) for p in output["probabilities"].numpy()[0]],
      }
    )
  return results


def main(argv):
  if len(argv) < 3:
    raise app.UsageError(
      "Usage: python -m trainer.predict MODEL IMAGE...", exitcode=2
    )
  try:
    signature, _ = load_signature(argv[1])
  except (FileNotFoundError, tf.errors.OpError) as e:
    print(f"Error: {e}", file=sys.stderr)
    return 1
  results = predict(signature, expand(argv[2:]))
  width = max(len(r["image"]) for r in results)
  for result in results:
    if FLAGS.json:
      print(json.dumps(result))
    elif "error" in result:
      print(
        f"{result['image']:<{width}}  error: {result['error']}", file=sys.stderr
      )
    else:
      print(
        f"{result['image']:<{width}}  {result['class']}  "
        f"{result['probability']:.4f}"
      )
  return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
  app.run(main)
