"""The multi-worker cluster this process belongs to, from its environment.

TF_CONFIG, or Vertex AI's CLUSTER_SPEC when TF_CONFIG is absent: which
tasks train, which one is the chief, and where the job's tf.data service
dispatcher runs. Reads the environment only (no TensorFlow).
"""

import json
import os

from trainer.errors import UserError

# Vertex AI names worker pools workerpool0..3; the trainer uses pool 0 (the
# chief) and pool 1 (workers). launch.vertex puts tf.data service servers in
# pool 2, which Vertex's TF_CONFIG calls "ps": they are not TensorFlow
# servers, so they must not be in the collective cluster (its health checks
# would ping them and abort).
_TRAINING_POOLS = {"workerpool0": "chief", "workerpool1": "worker"}
DATA_SERVICE_POOL = "workerpool2"


def cluster_spec_from_env():
  """The multi-worker cluster as TF_CONFIG, or None for a single process.

  Reads TF_CONFIG, or Vertex AI's CLUSTER_SPEC when TF_CONFIG is absent
  (Vertex sets both for TensorFlow images; only CLUSTER_SPEC for others).
  Only the chief and worker jobs are kept.
  """
  if os.environ.get("TF_CONFIG"):
    tf_config = json.loads(os.environ["TF_CONFIG"])
    cluster = {
      job: tasks
      for job, tasks in tf_config.get("cluster", {}).items()
      if job in _TRAINING_POOLS.values()
    }
  elif os.environ.get("CLUSTER_SPEC"):
    spec = json.loads(os.environ["CLUSTER_SPEC"])
    cluster = {
      _TRAINING_POOLS[pool]: tasks
      for pool, tasks in spec["cluster"].items()
      if pool in _TRAINING_POOLS
    }
    task = spec["task"]
    tf_config = {
      "task": {
        "type": _TRAINING_POOLS.get(task["type"], task["type"]),
        "index": task["index"],
      }
    }
  else:
    return None
  task = tf_config.get("task", {})
  if task.get("type") not in _TRAINING_POOLS.values():
    return None
  # Other keys (rpc_layer, environment) pass through to TensorFlow.
  return {
    **tf_config,
    "cluster": cluster,
    "task": {"type": task["type"], "index": task.get("index", 0)},
  }


def vertex_dispatcher(cluster_spec):
  """HOST:PORT of the tf.data dispatcher in a Vertex AI CLUSTER_SPEC, or None.

  Replica 0 of the data service pool runs it on its own address.
  """
  servers = cluster_spec.get("cluster", {}).get(DATA_SERVICE_POOL)
  return servers[0] if servers else None


def data_service_address(value):
  """--data_service as a grpc:// address; `vertex` is this job's pool 2.

  Raises:
    UserError: `vertex` outside a Vertex AI job with a data service pool.
  """
  if value != "vertex":
    return value
  dispatcher = vertex_dispatcher(
    json.loads(os.environ.get("CLUSTER_SPEC") or "{}")
  )
  if not dispatcher:
    raise UserError(
      "--data_service=vertex needs a Vertex AI job with tf.data "
      f"service servers in {DATA_SERVICE_POOL} (CLUSTER_SPEC has "
      "none); submit with python -m launch.vertex "
      "--data_service_workers=N"
    )
  return f"grpc://{dispatcher}"


def num_cluster_tasks(tf_config):
  """How many chief and worker tasks `tf_config` names (0 for None)."""
  if not tf_config:
    return 0
  return sum(
    len(v)
    for k, v in tf_config.get("cluster", {}).items()
    if k in ("chief", "worker")
  )


def is_chief(task_type, task_id, tf_config):
  """Whether this task is the chief: the chief task, or worker 0 of a
  cluster without one (TensorFlow's convention)."""
  if task_type == "chief":
    return True
  has_chief = "chief" in tf_config.get("cluster", {})
  return not has_chief and task_type == "worker" and task_id == 0
