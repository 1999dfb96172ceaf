"""Probes of warm starting (--init_from): on two workers, and from Cloud
Storage."""

import json
import os

from prelude import emit
from prelude import tiny
import tensorflow as tf

from trainer import model as model_lib
from trainer import outputs
from trainer import train as train_lib
from trainer import warm_start


def load_on_workers():
  """Each of two workers warm-starts from $INIT_FROM (4 classes, conv1 and
  bn1 frozen); the digest of what it loaded. The negative control: each
  worker then loads its own $OTHER source into the same model; a worker that
  loaded other weights must show up in the digest (nothing re-syncs the
  weights after a load to hide it)."""
  config = tiny(
    num_classes=4,
    steps_per_epoch=2,
    freeze="conv1,bn1",
    init_from=os.environ["INIT_FROM"],
    strategy="multi_worker",
  )
  trainer = train_lib.Trainer(config)
  loaded = model_lib.weights_digest(trainer.model)
  other = warm_start.read_source(
    config.replace(init_from=os.environ["OTHER"]), trainer.run_dir
  )
  with trainer.strategy.scope():
    warm_start.load_matching_layers(trainer.model, other)
  emit(
    loaded=loaded,
    other=model_lib.weights_digest(trainer.model),
    replicas=trainer.info.num_replicas,
  )


def init_from_gcs():
  """Copies the run at $SOURCE (best/, export/model.keras, config.json) to
  gs://alexnet-test/source, as a run with --model_dir=gs://... records its
  layout; then what warm_start.read_source reads from each copy, and from
  the local run's step-0 checkpoint (the control)."""
  local, remote = os.environ["SOURCE"], "gs://alexnet-test/source"
  for name in ["export/model.keras"] + [
    "best/" + n for n in tf.io.gfile.listdir(os.path.join(local, "best"))
  ]:
    tf.io.gfile.makedirs(os.path.dirname(os.path.join(remote, name)))
    tf.io.gfile.copy(os.path.join(local, name), os.path.join(remote, name))
  with open(os.path.join(local, "config.json")) as f:
    recorded = json.load(f)
  recorded["run_dir"] = outputs.RunDir.for_training(remote, "test").recorded()
  with tf.io.gfile.GFile(os.path.join(remote, "config.json"), "w") as f:
    f.write(json.dumps(recorded))
  new_run = outputs.RunDir.for_training(os.environ["MODEL_DIR"], "test")

  def read(path):
    config = tiny(num_classes=4, init_from=path)
    source = warm_start.read_source(config, new_run)
    return source.location, {
      k: [w.tolist() for w in v] for k, v in source.weights.items()
    }

  emit(
    run=read(remote),
    local_run=read(local),
    step_0=read(os.path.join(local, "checkpoints", "ckpt-0")),
    keras=read(remote + "/export/model.keras"),
    local_keras=read(local + "/export/model.keras"),
  )
