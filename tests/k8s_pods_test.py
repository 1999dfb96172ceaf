"""launch.k8s as a user runs it: the command line, --apply and --delete
through the real kubernetes client against a stand-in API server
(tests/fake_kube_api.py), and the pods of a generated JobSet run here as
separate processes with exactly the environment the manifest gives them -
the DNS names of the JobSet's headless Service mapped to 127.0.0.2 and
127.0.0.3 through launch.k8s_pod's test-only host map (one machine shares
one network: each "pod" also gets its own port)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

from conftest import REPO
from conftest import cli_env
from fake_kube_api import FakeKubeApi
import k8s_test
import pytest
import yaml

pytestmark = pytest.mark.multiprocess

IMAGE = k8s_test.IMAGE
TRAINER = k8s_test.TRAINER


def launch(*args, env=None):
  started = time.time()
  result = subprocess.run(
    [sys.executable, "-m", "launch.k8s", *args],
    cwd=REPO,
    env={**cli_env("/tmp"), **(env or {})},
    capture_output=True,
    text=True,
    timeout=120,
  )
  result.seconds = time.time() - started
  return result


def test_a_typo_is_one_line_in_under_a_second():
  result = launch("--dry_run", f"--image={IMAGE}", "--", *TRAINER, "--epocs=3")
  assert result.returncode == 2
  (line,) = result.stderr.splitlines()
  assert line.startswith(
    "Error: trainer flags: Unknown command line flag 'epocs'"
  )
  assert result.seconds < 1.0, result.seconds


@pytest.mark.parametrize(
  "shape",
  [
    ["--workers=2", "--accelerator=nvidia-l4"],
    ["--accelerator=tpu-v5-lite-podslice", "--tpu_topology=2x4"],
    ["--workers=2", "--data_service_workers=2"],
    ["--workers=2", "--format=indexed-job"],
  ],
)
def test_dry_run_prints_schema_valid_yaml(shape):
  result = launch(
    "--dry_run", "--name=run1", f"--image={IMAGE}", *shape, "--", *TRAINER
  )
  assert result.returncode == 0, result.stderr
  objects = list(yaml.safe_load_all(result.stdout))
  assert "&id" not in result.stdout  # Every object written out in full.
  for obj in objects:
    if obj["kind"] == "JobSet":
      k8s_test.validate_jobset(obj)
    else:
      k8s_test.validate_core(obj)


def test_without_an_image_it_names_this_packages_build():
  result = launch("--dry_run", "--name=run1", "--project=proj", "--", *TRAINER)
  assert result.returncode == 0, result.stderr
  (jobset,) = yaml.safe_load_all(result.stdout)
  pod = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
  image = pod["spec"]["containers"][0]["image"]
  assert re.fullmatch(
    r"us-central1-docker\.pkg\.dev/proj/alexnet/alexnet-tf:[0-9a-f]{16}", image
  ), image


def test_apply_and_delete_through_the_real_client(tmp_path):
  with FakeKubeApi() as api:
    env = {"KUBECONFIG": api.kubeconfig(str(tmp_path))}
    args = ["--name=run1", f"--image={IMAGE}", "--workers=2", "--", *TRAINER]
    dry = launch("--dry_run", *args)
    applied = launch("--apply", *args, env=env)
    assert applied.returncode == 0, applied.stderr
    (expected,) = yaml.safe_load_all(dry.stdout)
    (received,) = api.objects.values()
    del received["metadata"]["uid"]  # The server's.
    assert api.objects == {("JobSet", "default", "run1"): expected}
    assert "fieldValidation=Strict" in api.requests[0][1], api.requests
    assert "Submitted run1. Follow the chief:" in applied.stdout
    assert (
      "kubectl logs -f -n default -l jobset.sigs.k8s.io/jobset-name=run1,"
      "jobset.sigs.k8s.io/replicatedjob-name=chief" in applied.stdout
    )
    again = launch("--apply", *args, env=env)
    assert again.returncode == 1
    (line,) = again.stderr.splitlines()
    assert line == (
      "Error: run1 already exists in namespace default: pick another --name, "
      "or python -m launch.k8s --delete=run1"
    )
    deleted = launch("--delete=run1", env=env)
    assert deleted.returncode == 0, deleted.stderr
    assert api.objects == {}
    assert (
      "DELETE",
      "/apis/jobset.x-k8s.io/v1alpha2/namespaces/default/jobsets/run1",
    ) in api.requests

    indexed = launch("--apply", "--format=indexed-job", *args, env=env)
    assert indexed.returncode == 0, indexed.stderr
    assert sorted(api.objects) == [
      ("Job", "default", "run1-chief"),
      ("Job", "default", "run1-worker"),
      ("Service", "default", "run1"),
    ]
    # The Service goes with the chief's Job (its TTL, or --delete).
    (owner,) = api.objects[("Service", "default", "run1")]["metadata"][
      "ownerReferences"
    ]
    chief = api.objects[("Job", "default", "run1-chief")]
    assert owner["uid"] == chief["metadata"]["uid"]
    gone = launch("--delete=run1", "--format=indexed-job", env=env)
    assert gone.returncode == 0, gone.stderr
    assert api.objects == {}
    nothing = launch("--delete=run1", "--format=indexed-job", env=env)
    assert nothing.returncode == 1
    assert nothing.stderr.strip() == (
      "Error: no indexed-job run1 in namespace default"
    )
    elsewhere = launch("--apply", "--namespace=ml", *args, env=env)
    assert elsewhere.returncode == 1
    assert elsewhere.stderr.strip() == (
      "Error: namespace ml does not exist: kubectl create namespace ml, or "
      "pass another --namespace"
    )


def test_a_cluster_without_jobset_says_how_to_install_it(tmp_path):
  with FakeKubeApi(without_jobset=True) as api:
    env = {"KUBECONFIG": api.kubeconfig(str(tmp_path))}
    result = launch(
      "--apply", "--name=run1", f"--image={IMAGE}", "--", *TRAINER, env=env
    )
  assert result.returncode == 1
  (line,) = result.stderr.splitlines()
  assert "the cluster has no JobSet API" in line
  assert "jobset/releases/download/v0.12.0/manifests.yaml" in line
  assert "--format=indexed-job" in line


def _free_ports(count):
  import socket

  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


class Pods:
  """The trainer pods of a JobSet, as processes on this machine."""

  def __init__(self, jobset, cache_dir, log_dir):
    self.pods = []  # (name, argv, env)
    self.log_dir = log_dir
    names = []
    for replicated in jobset["spec"]["replicatedJobs"]:
      spec = replicated["template"]["spec"]
      container = spec["template"]["spec"]["containers"][0]
      for index in range(spec["completions"]):
        names.append((replicated["name"], index, container))
    ports = _free_ports(len(names))
    host_map = {}
    for number, (role, index, container) in enumerate(names):
      env = {e["name"]: e["value"] for e in container["env"]}
      host = env["ALEXNET_HOST_PATTERN"].format(role=role, index=index)
      port = container["ports"][0]["containerPort"]
      host_map[f"{host}:{port}"] = f"127.0.0.{2 + number}:{ports[number]}"
    for role, index, container in names:
      env = {e["name"]: e["value"] for e in container["env"]}
      env.update(
        JOB_COMPLETION_INDEX=str(index),  # What Kubernetes sets.
        ALEXNET_TEST_HOST_MAP=json.dumps(host_map),
        # Two pods share this machine's two cores.
        CUDA_VISIBLE_DEVICES="-1",
        TF_NUM_INTRAOP_THREADS="1",
        TF_NUM_INTEROP_THREADS="1",
      )
      argv = [
        sys.executable if a == "python" else a for a in container["command"]
      ]
      self.pods.append(
        (f"{role}-{index}", argv + container["args"], cli_env(cache_dir, **env))
      )
    self.processes = {}

  def start(self, attempt):
    for name, argv, env in self.pods:
      log = open(os.path.join(self.log_dir, f"{name}.{attempt}.log"), "w")
      self.processes[name] = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
      )

  def wait(self, timeout=600):
    return {n: p.wait(timeout=timeout) for n, p in self.processes.items()}

  def output(self, name, attempt):
    with open(os.path.join(self.log_dir, f"{name}.{attempt}.log")) as f:
      return f.read()

  def digests(self, attempt):
    return {
      name: re.search(
        r"weights sha256 ([0-9a-f]{64})", self.output(name, attempt)
      ).group(1)
      for name, _, _ in self.pods
    }


def _jobset(model_dir, *trainer):
  volume = os.path.dirname(model_dir)
  result = launch(
    "--dry_run", "--name=run1", f"--image={IMAGE}", "--workers=2",
    "--grace_secs=10", f"--volume=shared:{volume}", "--",
    "--config=tiny", f"--model_dir={model_dir}", "--precision=float32",
    "--deterministic", "--epochs=2", "--synthetic_train_examples=128",
    "--synthetic_eval_examples=64", "--steps_per_call=2",
    "--checkpoint_every_steps=2", "--collective_timeout_secs=60", *trainer,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr
  (jobset,) = yaml.safe_load_all(result.stdout)
  return jobset


def test_the_pods_train_together_and_a_killed_pod_resumes(tmp_path, cache_dir):
  """Two trainer pods (chief and worker) end with identical weights; killed
  mid-run - one pod SIGKILLed, the other SIGTERMed then killed as a JobSet
  restart does - and started again, they resume and end with the same
  weights as the run never interrupted. Control: another --seed ends with
  other weights."""
  volume = tmp_path / "volume"  # Every pod's shared model dir (a RWX claim).
  whole = Pods(_jobset(volume / "whole"), cache_dir, str(tmp_path))
  whole.start("whole")
  assert whole.wait() == {"chief-0": 0, "worker-0": 0}, whole.output(
    "chief-0", "whole"
  )[-3000:]
  digests = whole.digests("whole")
  assert digests["chief-0"] == digests["worker-0"]
  assert "task=chief:0 chief=True strategy=multi_worker" in whole.output(
    "chief-0", "whole"
  )

  killed = Pods(_jobset(volume / "killed"), cache_dir, str(tmp_path))
  killed.start("first")
  deadline = time.time() + 300
  while not (volume / "killed" / "checkpoints" / "ckpt-4.index").exists():
    assert time.time() < deadline, killed.output("chief-0", "first")[-3000:]
    assert all(p.poll() is None for p in killed.processes.values())
    time.sleep(0.05)
  killed.processes["worker-0"].send_signal(signal.SIGKILL)
  chief = killed.processes["chief-0"]
  chief.send_signal(signal.SIGTERM)  # The restart deletes every pod.
  try:
    chief.wait(timeout=10)  # terminationGracePeriodSeconds
  except subprocess.TimeoutExpired:
    chief.kill()
  killed.wait()
  assert "Finished: completed" not in killed.output("chief-0", "first")
  killed.start("second")
  codes = killed.wait()
  assert codes == {"chief-0": 0, "worker-0": 0}, killed.output(
    "chief-0", "second"
  )[-3000:]
  assert "Resumed from" in killed.output("chief-0", "second")
  assert killed.digests("second") == digests

  other = Pods(_jobset(volume / "other", "--seed=2"), cache_dir, str(tmp_path))
  other.start("other")
  assert other.wait() == {"chief-0": 0, "worker-0": 0}
  assert other.digests("other")["chief-0"] != digests["chief-0"]
