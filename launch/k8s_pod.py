"""The entry point of every pod launch.k8s writes: python -m launch.k8s_pod [-- TRAINER FLAGS]

Builds this pod's part of the cluster from what Kubernetes and the manifest
give it, then becomes that process (exec, so SIGTERM from the kubelet
reaches it directly):

  ALEXNET_ROLE          chief | worker | dispatcher | data-worker (the
                        manifest's, per replicated job)
  JOB_COMPLETION_INDEX  this pod's index in its role (Kubernetes sets it in
                        every Indexed Job)
  ALEXNET_CLUSTER       role=pods:port,... (the whole job's layout)
  ALEXNET_HOST_PATTERN  a pod's DNS name, e.g. run-{role}-0-{index}.run

Trainers get TF_CONFIG (chief and workers, this pod's task) and run
`trainer.task`; the tf.data service pods run `trainer.data_service`.

ALEXNET_TEST_HOST_MAP (tests only): a JSON object mapping "HOST:PORT" of
the pod DNS names to loopback addresses, so that the pods' processes can run
side by side on one machine (where every process shares one network). Never
set on a cluster.

Never imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import sys

TEST_HOST_MAP = "ALEXNET_TEST_HOST_MAP"
TRAINER_ROLES = ("chief", "worker")


def layout(text: str) -> dict[str, tuple[int, int]]:
  """ALEXNET_CLUSTER -> {role: (pods, port)}."""
  out = {}
  for part in text.split(","):
    role, _, shape = part.partition("=")
    pods, _, port = shape.partition(":")
    out[role] = (int(pods), int(port))
  return out


class Pod:
  """This pod, from its environment."""

  def __init__(self, env):
    missing = [
      name
      for name in (
        "ALEXNET_ROLE",
        "JOB_COMPLETION_INDEX",
        "ALEXNET_CLUSTER",
        "ALEXNET_HOST_PATTERN",
      )
      if name not in env
    ]
    if missing:
      raise ValueError(
        f"launch.k8s_pod: {', '.join(missing)} not set: this runs inside a "
        "pod of a manifest launch.k8s wrote"
      )
    self.role = env["ALEXNET_ROLE"]
    self.index = int(env["JOB_COMPLETION_INDEX"])
    self.cluster = layout(env["ALEXNET_CLUSTER"])
    self.pattern = env["ALEXNET_HOST_PATTERN"]
    self.host_map = json.loads(env.get(TEST_HOST_MAP) or "{}")

  def address(self, role: str, index: int = 0) -> str:
    """HOST:PORT other pods reach `role`'s pod `index` at."""
    _, port = self.cluster[role]
    name = f"{self.pattern.format(role=role, index=index)}:{port}"
    return self.host_map.get(name, name)

  def tf_config(self) -> dict | None:
    """The trainers' TF_CONFIG for this pod; None for a lone trainer."""
    trainers = {
      role: [self.address(role, i) for i in range(self.cluster[role][0])]
      for role in TRAINER_ROLES
      if role in self.cluster
    }
    if sum(len(a) for a in trainers.values()) < 2:
      return None
    return {
      "cluster": trainers,
      "task": {"type": self.role, "index": self.index},
    }

  def command(self, trainer_args: list[str]) -> tuple[list[str], dict]:
    """(argv, extra environment) of the process this pod becomes."""
    python = [sys.executable, "-m"]
    if self.role in TRAINER_ROLES:
      config = self.tf_config()
      env = {"TF_CONFIG": json.dumps(config)} if config else {}
      return [*python, "trainer.task", *trainer_args], env
    own = self.address(self.role, self.index)
    host, _, port = own.rpartition(":")
    if self.role == "dispatcher":
      return [
        *python,
        "trainer.data_service",
        "--role=dispatcher",
        f"--port={port}",
      ], {}
    if self.role == "data-worker":
      return [
        *python,
        "trainer.data_service",
        "--role=worker",
        f"--dispatcher={self.address('dispatcher')}",
        f"--port={port}",
        f"--host={host}",
      ], {}
    raise ValueError(f"launch.k8s_pod: unknown ALEXNET_ROLE={self.role!r}")


def main(argv: list[str]) -> int:
  args = argv[1:]
  if args[:1] == ["--"]:
    args = args[1:]
  try:
    pod = Pod(os.environ)
    command, env = pod.command(args)
  except ValueError as e:
    print(f"Error: {e}", file=sys.stderr)
    return 2
  if env.get("TF_CONFIG"):
    print(f"TF_CONFIG={env['TF_CONFIG']}", flush=True)
  os.execve(command[0], command, {**os.environ, **env})
  return 0  # Not reached.


if __name__ == "__main__":
  sys.exit(main(sys.argv))
