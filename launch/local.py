"""Run N trainer workers on this machine: python -m launch.local --workers=2 -- FLAGS

    python -m launch.local --workers=2 -- --strategy=multi_worker --model_dir=runs/mw

Each worker is `python -m trainer.task FLAGS` with a generated TF_CONFIG
(free ports on 127.0.0.1), one GPU each when there are enough GPUs
(CUDA_VISIBLE_DEVICES), otherwise CPU workers sharing the cores. Output lines
are prefixed with the worker's index. If any worker fails, the others are
stopped and the launcher exits non-zero; Ctrl-C stops them all.

For one machine with several GPUs, `python -m trainer.task --strategy=mirrored`
(one process) is simpler and faster; use this to rehearse a multi-machine job
or to test MultiWorkerMirroredStrategy without a cluster.

Never imports TensorFlow.
"""

import os
import signal
import subprocess
import sys
import threading
import time

from absl import app
from absl import flags

from launch import cluster
from launch import trainer_flags as trainer_flags_lib

# The trainer's exit code for a preempted run that can resume (no TensorFlow).
from trainer.errors import PREEMPTED_EXIT_CODE
from trainer.errors import UserError

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
  """Defines the launcher's flags on `flag_values`, when it runs as the
  command: importing the module defines no global flag."""
  flags.DEFINE_integer(
    "workers", 2, "Worker processes to start.", flag_values=flag_values
  )
  flags.DEFINE_enum(
    "devices",
    "auto",
    ["auto", "gpu", "cpu"],
    "'gpu': one GPU per worker; 'cpu': no GPUs; 'auto': gpu if "
    "there are at least --workers GPUs, else cpu.",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "threads_per_worker",
    0,
    "CPU threads per worker (0 = the cores divided among the workers).",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "data_service_workers",
    0,
    "Also start a tf.data service "
    "dispatcher and this many workers on 127.0.0.1, and "
    "point the trainers at it (--data_service).",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "grace_secs",
    20,
    "After a failure or Ctrl-C, seconds "
    "between SIGTERM and SIGKILL for the remaining workers.",
    flag_values=flag_values,
  )


def _pump(stream, prefix, lock):
  for line in iter(stream.readline, ""):
    with lock:
      sys.stdout.write(f"{prefix}{line}")
      sys.stdout.flush()
  stream.close()


class Workers:
  """Started worker processes, watched until all end or one fails.

  Helpers (data service servers) run until the workers end; a helper that
  dies fails the job like a worker.
  """

  def __init__(self, commands_and_envs, grace_secs, helpers=()):
    self.grace_secs = grace_secs
    self.processes = []
    self.helpers = []
    self._threads = []
    self._lock = threading.Lock()
    for name, command in helpers:
      self.helpers.append(self._start(command, dict(os.environ), name))
    for index, (command, env) in enumerate(commands_and_envs):
      self.processes.append(self._start(command, env, f"worker {index}"))

  def _start(self, command, env, name):
    process = subprocess.Popen(
      command,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      start_new_session=True,
    )
    print(f"[launch] {name} pid {process.pid}", flush=True)
    thread = threading.Thread(
      target=_pump, daemon=True, args=(process.stdout, f"[{name}] ", self._lock)
    )
    thread.start()
    self._threads.append(thread)
    return process

  def stop(self, include_helpers=True):
    """SIGTERM (lets workers checkpoint), then SIGKILL after the grace time."""
    processes = self.processes + (self.helpers if include_helpers else [])
    for process in processes:
      if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
    deadline = time.time() + self.grace_secs
    for process in processes:
      try:
        process.wait(timeout=max(0.1, deadline - time.time()))
      except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait()

  def wait(self):
    """Returns the job's exit code: 0, the first failure's code, or 75."""
    try:
      while True:
        codes = [p.poll() for p in self.processes]
        failed = [
          (f"worker {i}", c)
          for i, c in enumerate(codes)
          if c not in (None, 0, PREEMPTED_EXIT_CODE)
        ]
        failed += [
          ("data service server", p.poll())
          for p in self.helpers
          if p.poll() is not None
        ]
        if failed:
          name, code = failed[0]
          print(
            f"[launch] {name} exited with {code}; stopping the others.",
            flush=True,
          )
          self.stop()
          return code if code and code > 0 else 1
        if all(c is not None for c in codes):
          self.stop()  # the data service servers, if any
          return PREEMPTED_EXIT_CODE if PREEMPTED_EXIT_CODE in codes else 0
        time.sleep(0.2)
    except KeyboardInterrupt:
      print("[launch] interrupted; stopping all workers.", flush=True)
      self.stop()
      return 130
    finally:
      for thread in self._threads:
        thread.join(timeout=5)


def _signal_group(process, signum):
  try:
    os.killpg(process.pid, signum)
  except ProcessLookupError:
    pass


def check_trainer_flags(trainer_args, num_workers, devices):
  """The trainer flags, parsed as every worker will, against the workers
  this launcher starts (`devices`: 'gpu' or 'cpu').

  Raises:
    UserError: one line naming the trainer flag that cannot work here.
  """
  config = trainer_flags_lib.parse(trainer_args).config
  workers = (
    "one worker"
    if num_workers == 1
    else (f"{num_workers} workers as one multi_worker cluster")
  )
  if config.strategy not in ("auto", "multi_worker"):
    raise UserError(
      f"trainer flag --strategy={config.strategy}: launch.local "
      f"runs {workers}; use --strategy=multi_worker or auto"
    )
  required = config.require_accelerator
  if required != "none" and required != devices:
    raise UserError(
      f"trainer flag --require_accelerator={required}: the "
      f"workers run on {devices.upper()}s (--devices)"
    )


def main(argv):
  trainer_flags = argv[1:]
  if FLAGS.workers < 1:
    raise app.UsageError(
      f"--workers must be >= 1, got {FLAGS.workers}", exitcode=2
    )
  envs, devices = cluster.worker_envs(
    FLAGS.workers, FLAGS.devices, FLAGS.threads_per_worker
  )
  try:
    check_trainer_flags(trainer_flags, FLAGS.workers, devices)
  except UserError as e:
    print(f"Error: {e}", file=sys.stderr)
    return 2
  helpers = []
  if FLAGS.data_service_workers:
    ports = cluster.free_ports(1 + FLAGS.data_service_workers)
    dispatcher = f"127.0.0.1:{ports[0]}"
    helpers.append(
      (
        "data dispatcher",
        [
          sys.executable,
          "-m",
          "trainer.data_service",
          "--role=dispatcher",
          f"--port={ports[0]}",
        ],
      )
    )
    for index, port in enumerate(ports[1:]):
      helpers.append(
        (
          f"data worker {index}",
          [
            sys.executable,
            "-m",
            "trainer.data_service",
            "--role=worker",
            f"--dispatcher={dispatcher}",
            f"--port={port}",
          ],
        )
      )
    trainer_flags = [*trainer_flags, f"--data_service=grpc://{dispatcher}"]
  command = [sys.executable, "-m", "trainer.task", *trainer_flags]
  print(
    f"[launch] {FLAGS.workers} {devices} worker(s): {' '.join(command[1:])}",
    flush=True,
  )
  workers = Workers([(command, env) for env in envs], FLAGS.grace_secs, helpers)
  # SIGTERM to the launcher (a preempted VM) reaches every worker.
  signal.signal(signal.SIGTERM, lambda *_: workers.stop())
  return workers.wait()


if __name__ == "__main__":
  define_flags()
  app.run(main)
