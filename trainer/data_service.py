"""tf.data service servers: python -m trainer.data_service --role=dispatcher|worker

    python -m trainer.data_service --role=dispatcher --port=5050
    python -m trainer.data_service --role=worker --dispatcher=127.0.0.1:5050 --port=5051
    python -m trainer.task --data_service=grpc://127.0.0.1:5050 ...

When the accelerator host's CPUs cannot decode and augment fast enough,
workers on other machines do it: the trainer sends its input pipeline to the
dispatcher and reads finished batches back. Workers need read access to the
training files (gs:// or a shared disk). `python -m launch.local
--data_service_workers=N` starts a dispatcher and N workers for you.
Order is dynamic: runs using it are not bit-reproducible.
"""

import os

from absl import app
from absl import flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

FLAGS = flags.FLAGS
flags.DEFINE_enum("role", None, ["dispatcher", "worker"], "Which server to run.")
flags.DEFINE_integer("port", 0, "Port to listen on.")
flags.DEFINE_string("dispatcher", "", "Worker: the dispatcher's HOST:PORT.")
flags.DEFINE_string("host", "127.0.0.1", "Worker: the address the dispatcher "
                    "and trainers reach this worker at.")


def serve(role, port, dispatcher="", host="127.0.0.1"):
  """Starts a server and blocks until the process is terminated."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  service = tf.data.experimental.service
  if role == "dispatcher":
    server = service.DispatchServer(service.DispatcherConfig(port=port))
  else:
    if not dispatcher:
      raise app.UsageError("--role=worker needs --dispatcher=HOST:PORT", exitcode=2)
    server = service.WorkerServer(service.WorkerConfig(
        dispatcher_address=dispatcher.replace("grpc://", ""),
        worker_address=f"{host}:{port}", port=port))
  print(f"tf.data service {role} listening on {host}:{port}", flush=True)
  # SIGTERM keeps its default action (exit): a Python handler would never
  # run while join() blocks in C++.
  server.join()


def main(argv):
  del argv
  if not FLAGS.port:
    raise app.UsageError("--port is required", exitcode=2)
  serve(FLAGS.role, FLAGS.port, FLAGS.dispatcher, FLAGS.host)
  return 0


if __name__ == "__main__":
  app.run(main)
