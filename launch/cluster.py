"""A cluster of trainer processes on this machine: ports on 127.0.0.1 and
each worker's environment (TF_CONFIG, devices, threads).

Defines no flags, so the benchmark can use it beside the trainer's flags;
`launch.local` is its command line. Never imports TensorFlow.
"""

import json
import os
import shutil
import socket
import subprocess

from absl import app


def free_ports(count):
  """Ports free on 127.0.0.1 now (held open together so they differ)."""
  sockets = []
  try:
    for _ in range(count):
      s = socket.socket()
      s.bind(("127.0.0.1", 0))
      sockets.append(s)
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def count_gpus():
  """NVIDIA GPUs visible to this process, without importing TensorFlow."""
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    return len(
      [d for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    )
  if not shutil.which("nvidia-smi"):
    return 0
  try:
    out = subprocess.run(
      ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20
    ).stdout
  except (OSError, subprocess.TimeoutExpired):
    return 0
  return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def tf_configs(num_workers):
  addresses = [f"127.0.0.1:{port}" for port in free_ports(num_workers)]
  return [
    {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}}
    for i in range(num_workers)
  ]


def worker_envs(num_workers, devices, threads_per_worker):
  """One environment per worker: TF_CONFIG, devices and thread counts."""
  gpus = count_gpus()
  if devices == "auto":
    devices = "gpu" if gpus >= num_workers else "cpu"
  if devices == "gpu" and gpus < num_workers:
    raise app.UsageError(
      f"--devices=gpu needs {num_workers} GPUs, found {gpus}"
    )
  threads = threads_per_worker or max(1, (os.cpu_count() or 1) // num_workers)
  envs = []
  for index, tf_config in enumerate(tf_configs(num_workers)):
    env = dict(os.environ)
    env.pop("CLUSTER_SPEC", None)
    if num_workers > 1:
      env["TF_CONFIG"] = json.dumps(tf_config)
    if devices == "gpu":
      env["CUDA_VISIBLE_DEVICES"] = str(index)
    else:
      env["CUDA_VISIBLE_DEVICES"] = "-1"
      # CPU workers share the cores instead of each grabbing all of them.
      env["TF_NUM_INTRAOP_THREADS"] = str(threads)
      env["TF_NUM_INTEROP_THREADS"] = str(max(1, threads // 2))
    envs.append(env)
  return envs, devices
