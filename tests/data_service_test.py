"""tf.data service on loopback: a dispatcher and two workers in their own
processes do the decoding; training reaches the same accuracy as without."""

from conftest import read_jsonl
import pytest

pytestmark = pytest.mark.multiprocess


def test_training_through_data_service_matches_local_input(run_cli, tmp_path):
  common = ["--config=tiny", "--epochs=3"]
  local = run_cli(
    "trainer.task", *common, f"--model_dir={tmp_path / 'local'}", check=True
  )
  served = run_cli(
    "launch.local",
    "--workers=1",
    "--data_service_workers=2",
    "--grace_secs=5",
    "--",
    *common,
    f"--model_dir={tmp_path / 'served'}",
    timeout=600,
  )
  assert served.returncode == 0, served.stdout[-4000:]
  out = served.stdout
  assert "[data dispatcher] tf.data service dispatcher listening" in out
  assert "[data worker 0] tf.data service worker listening" in out
  assert "[data worker 1] tf.data service worker listening" in out
  assert "--data_service=grpc://127.0.0.1:" in out
  without = read_jsonl(tmp_path / "local" / "metrics.jsonl")[-1]
  with_service = read_jsonl(tmp_path / "served" / "metrics.jsonl")[-1]
  assert without["val_accuracy"] >= 0.9
  assert with_service["val_accuracy"] >= 0.9
  assert abs(with_service["val_accuracy"] - without["val_accuracy"]) <= 0.1
  del local


def _free_port(also_next=False):
  """A port free on 127.0.0.1 (with port + 1 free too if asked: pool 2's
  replica 0 serves on both)."""
  import socket

  while True:
    with socket.socket() as first, socket.socket() as second:
      first.bind(("127.0.0.1", 0))
      port = first.getsockname()[1]
      if not also_next:
        return port
      try:
        second.bind(("127.0.0.1", port + 1))
        return port
      except OSError:
        continue


def test_vertex_data_service_pool_feeds_the_trainer(tmp_path, cache_dir):
  """As Vertex AI runs launch.vertex --data_service_workers=2: pool 2's two
  replicas read their roles from CLUSTER_SPEC; the chief finds the
  dispatcher with --data_service=vertex and ignores pool 2 (TF_CONFIG's
  "ps") when it builds its cluster."""
  import json
  import subprocess
  import sys

  from conftest import REPO
  from conftest import cli_env

  pool2 = [
    f"127.0.0.1:{_free_port(also_next=True)}",
    f"127.0.0.1:{_free_port()}",
  ]
  chief = [f"127.0.0.1:{_free_port()}"]
  cluster = {"workerpool0": chief, "workerpool2": pool2}

  def vertex_env(pool, index):
    spec = {"cluster": cluster, "task": {"type": pool, "index": index}}
    tf_config = {
      "cluster": {"chief": chief, "ps": pool2},
      "task": {
        "type": {"workerpool0": "chief"}.get(pool, "ps"),
        "index": index,
      },
      "environment": "cloud",
    }
    return cli_env(
      cache_dir, CLUSTER_SPEC=json.dumps(spec), TF_CONFIG=json.dumps(tf_config)
    )

  servers = [
    subprocess.Popen(
      [sys.executable, "-m", "trainer.data_service", "--role=vertex"],
      cwd=REPO,
      env=vertex_env("workerpool2", index),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for index in range(2)
  ]
  try:
    trainer = subprocess.run(
      [
        sys.executable,
        "-m",
        "trainer.task",
        "--config=tiny",
        "--epochs=3",
        "--data_service=vertex",
        f"--model_dir={tmp_path / 'run'}",
      ],
      cwd=REPO,
      env=vertex_env("workerpool0", 0),
      capture_output=True,
      text=True,
      timeout=600,
    )
    still_serving = [server.poll() is None for server in servers]
  finally:
    for server in servers:
      server.terminate()
    logs = [server.communicate(timeout=30)[0] for server in servers]
  assert trainer.returncode == 0, (
    trainer.stdout[-3000:] + trainer.stderr[-3000:]
  )
  assert still_serving == [True, True], logs
  dispatcher_host, dispatcher_port = pool2[0].rsplit(":", 1)
  assert f"dispatcher listening on {pool2[0]}" in logs[0]
  assert (
    f"worker listening on {dispatcher_host}:{int(dispatcher_port) + 1}"
    in logs[0]
  )
  assert f"worker listening on {pool2[1]}" in logs[1]
  assert (
    f"Input through the tf.data service at grpc://{pool2[0]}" in trainer.stdout
  )
  assert (
    "strategy=one_device" in trainer.stdout
  )  # one chief: pool 2 isn't a peer
  assert (
    read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]["val_accuracy"] >= 0.9
  )


def test_vertex_role_outside_its_pool_is_a_usage_error(run_cli):
  import json

  result = run_cli("trainer.data_service", "--role=vertex", timeout=120)
  assert result.returncode == 2
  assert "--role=vertex needs Vertex AI's CLUSTER_SPEC" in result.stderr
  spec = {
    "cluster": {"workerpool0": ["h0:2222"], "workerpool2": ["h2:2222"]},
    "task": {"type": "workerpool0", "index": 0},
  }
  result = run_cli(
    "trainer.data_service",
    "--role=vertex",
    timeout=120,
    env={"CLUSTER_SPEC": json.dumps(spec)},
  )
  assert result.returncode == 2
  assert (
    "runs in workerpool2; CLUSTER_SPEC says this replica is in workerpool0"
    in result.stderr
  )
