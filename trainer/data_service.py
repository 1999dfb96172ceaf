"""tf.data service servers: python -m trainer.data_service --role=dispatcher|worker|vertex

    python -m trainer.data_service --role=dispatcher --port=5050
    python -m trainer.data_service --role=worker --dispatcher=127.0.0.1:5050 --port=5051
    python -m trainer.task --data_service=grpc://127.0.0.1:5050 ...

When the accelerator host's CPUs cannot decode and augment fast enough,
workers on other machines do it: the trainer sends its input pipeline to the
dispatcher and reads finished batches back. Workers need read access to the
training files (gs:// or a shared disk). `python -m launch.local
--data_service_workers=N` starts a dispatcher and N workers for you.
Order is dynamic: runs using it are not bit-reproducible.

On Vertex AI (`python -m launch.vertex --data_service_workers=N`) every
replica of worker pool 2 runs `--role=vertex` and reads its part from
CLUSTER_SPEC: replica 0 runs the dispatcher on its pool address and a worker
on the next port; the others run a worker on their own address. Trainers
find the dispatcher with `--data_service=vertex`.
"""

import json
import os

from absl import app
from absl import flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

FLAGS = flags.FLAGS
flags.DEFINE_enum(
  "role",
  None,
  ["dispatcher", "worker", "vertex"],
  "Which server to run; vertex: this replica's part of a "
  "Vertex AI data service pool (from CLUSTER_SPEC).",
)
flags.DEFINE_integer("port", 0, "Port to listen on.")
flags.DEFINE_string("dispatcher", "", "Worker: the dispatcher's HOST:PORT.")
flags.DEFINE_string(
  "host",
  "127.0.0.1",
  "Worker: the address the dispatcher and trainers reach this worker at.",
)


def _start(role, port, dispatcher="", host="127.0.0.1"):
  import tensorflow as tf

  service = tf.data.experimental.service
  if role == "dispatcher":
    server = service.DispatchServer(service.DispatcherConfig(port=port))
  else:
    if not dispatcher:
      raise app.UsageError(
        "--role=worker needs --dispatcher=HOST:PORT", exitcode=2
      )
    server = service.WorkerServer(
      service.WorkerConfig(
        dispatcher_address=dispatcher.replace("grpc://", ""),
        worker_address=f"{host}:{port}",
        port=port,
      )
    )
  print(f"tf.data service {role} listening on {host}:{port}", flush=True)
  return server


def serve(role, port, dispatcher="", host="127.0.0.1"):
  """Starts a server and blocks until the process is terminated."""
  # SIGTERM keeps its default action (exit): a Python handler would never
  # run while join() blocks in C++.
  _start(role, port, dispatcher, host).join()


def vertex_roles(cluster_spec, pool):
  """[(role, host, port)] this replica runs, from Vertex AI's CLUSTER_SPEC."""
  task = cluster_spec["task"]
  if task["type"] != pool:
    raise app.UsageError(
      f"--role=vertex runs in {pool}; CLUSTER_SPEC says "
      f"this replica is in {task['type']}",
      exitcode=2,
    )
  servers = cluster_spec["cluster"][pool]
  host, port = servers[task["index"]].rsplit(":", 1)
  if task["index"] == 0:
    # The dispatcher is light: its machine also decodes, on the next port.
    return [("dispatcher", host, int(port)), ("worker", host, int(port) + 1)]
  return [("worker", host, int(port))]


def serve_vertex(cluster_spec):
  """Runs this Vertex replica's servers until the process is terminated."""
  from trainer.platform import cluster

  dispatcher = cluster.vertex_dispatcher(cluster_spec)
  servers = [
    _start(role, port, dispatcher, host)
    for role, host, port in vertex_roles(
      cluster_spec, cluster.DATA_SERVICE_POOL
    )
  ]
  servers[0].join()


def main(argv):
  del argv
  if FLAGS.role == "vertex":
    if not os.environ.get("CLUSTER_SPEC"):
      raise app.UsageError(
        "--role=vertex needs Vertex AI's CLUSTER_SPEC environment variable",
        exitcode=2,
      )
    serve_vertex(json.loads(os.environ["CLUSTER_SPEC"]))
    return 0
  if not FLAGS.port:
    raise app.UsageError("--port is required", exitcode=2)
  serve(FLAGS.role, FLAGS.port, FLAGS.dispatcher, FLAGS.host)
  return 0


if __name__ == "__main__":
  app.run(main)
