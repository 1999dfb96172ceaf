"""Shared fixtures: run the CLI as a user would, with an isolated cache."""

import _posixsubprocess
import collections
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _own_cpu_seconds():
  """CPU seconds of this process (every thread), without its children."""
  own = resource.getrusage(resource.RUSAGE_SELF)
  return own.ru_utime + own.ru_stime


def _cpu_seconds():
  """CPU seconds of this process and of every child it has waited for."""
  own = resource.getrusage(resource.RUSAGE_SELF)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# The tiers. The default run (`python -m pytest tests`) is the fast tier:
# in-process tests, each within FAST_CPU_SECONDS. A test that starts a
# process or needs more carries one of these markers and runs with --all
# (or when its marker is selected with -m), as .ci/run does.
TIER_MARKERS = {
  "slow": "in-process, but more than a few CPU-seconds (training, export)",
  "multiprocess": "starts processes: the CLI as a user runs it, workers, "
  "probes needing a fresh TensorFlow",
  "install": "builds virtualenvs or packages and runs pip",
  "notebook": "executes a generated notebook in a Jupyter kernel",
}
# CPU seconds (user + system, every thread of this process; setup, call and
# teardown) an unmarked test may use. CPU time, not wall time: it does not
# move with the load other jobs put on a shared machine.
FAST_CPU_SECONDS = 8.0


def pytest_addoption(parser):
  parser.addoption(
    "--all",
    action="store_true",
    help="Run every tier: the "
    f"fast tier and the tests marked {', '.join(TIER_MARKERS)}.",
  )


def pytest_configure(config):
  for name, meaning in TIER_MARKERS.items():
    config.addinivalue_line("markers", f"{name}: {meaning}")
  config.addinivalue_line(
    "markers",
    "cpu_budget(seconds): an unmarked test's own CPU-second "
    "limit instead of FAST_CPU_SECONDS (the fast tier's one training run)",
  )


def pytest_collection_finish(session):
  """Starts TensorFlow (and numpy.testing) before the first test: their
  first imports start processes of their own (h5py asks `uname`, numpy 1.x
  runs `lscpu`), which would count against whichever fast-tier test ran
  first."""
  if not session.items:
    return
  if "tensorflow" not in sys.modules:
    from trainer import startup

    startup.start_tensorflow()
  # numpy 1.x (TensorFlow 2.17's) runs lscpu the first time numpy.testing
  # is imported, which tests do lazily through np.testing.
  import numpy.testing  # noqa: F401

  # Two threads per pool, whatever the machine: a test's CPU-seconds then
  # mean the same on 2 cores and on 64 (idle pool threads spin).
  import tensorflow as tf

  try:
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(2)
  except RuntimeError:  # A test module already started TensorFlow's runtime.
    pass


def _tier_markers(item):
  return [name for name in TIER_MARKERS if item.get_closest_marker(name)]


def pytest_collection_modifyitems(config, items):
  """Without --all or -m, deselects every test of the slower tiers."""
  if config.getoption("--all") or config.getoption("markexpr"):
    return
  fast = [item for item in items if not _tier_markers(item)]
  if len(fast) < len(items):
    config.hook.pytest_deselected(
      items=[item for item in items if _tier_markers(item)]
    )
    items[:] = fast


class _ProcessCounter:
  """Counts the processes this interpreter starts, by every route the
  standard library offers: subprocess, os.fork/forkpty/spawn/system, and
  multiprocessing (fork goes through os.fork; spawn and forkserver through
  _posixsubprocess.fork_exec)."""

  _PATCHED = (
    (subprocess.Popen, "_execute_child"),
    (_posixsubprocess, "fork_exec"),
    (os, "fork"),
    (os, "forkpty"),
    (os, "posix_spawn"),
    (os, "posix_spawnp"),
    (os, "system"),
  )

  def __init__(self):
    self.started = []

  def __enter__(self):
    self._saved = []
    for owner, name in self._PATCHED:
      original = getattr(owner, name, None)
      if original is None:
        continue
      self._saved.append((owner, name, original))
      setattr(owner, name, self._counting(name, original))
    return self

  def _counting(self, name, original):
    def counted(*args, **kwargs):
      self.started.append(name)
      return original(*args, **kwargs)

    return counted

  def __exit__(self, *exc):
    for owner, name, original in self._saved:
      setattr(owner, name, original)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  """Measures each test from setup to teardown: processes started, CPU.

  With ALEXNET_TEST_COST=FILE, appends each test's wall and CPU seconds
  (setup, call and teardown; its subprocesses' CPU included) as a JSON line:
  CPU seconds compare two suites on a shared machine where wall time can't."""
  del nextitem
  path = os.environ.get("ALEXNET_TEST_COST")
  cpu, wall = _cpu_seconds(), time.time()
  with _ProcessCounter() as processes:
    item.stash[_COST] = (processes, _own_cpu_seconds())
    yield
  if path:
    with open(path, "a") as f:
      f.write(
        json.dumps(
          {
            "test": item.nodeid,
            "cpu_secs": round(_cpu_seconds() - cpu, 2),
            "wall_secs": round(time.time() - wall, 2),
            "processes": len(processes.started),
          }
        )
        + "\n"
      )


_COST = pytest.StashKey()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  """An unmarked test that started a process or used more CPU seconds than
  its budget fails at teardown, naming the markers that would place it."""
  outcome = yield
  report = outcome.get_result()
  if call.when != "teardown" or _tier_markers(item) or not report.passed:
    return
  processes, own_cpu = item.stash[_COST]
  own_cpu = _own_cpu_seconds() - own_cpu
  budget = item.get_closest_marker("cpu_budget")
  budget = budget.args[0] if budget else FAST_CPU_SECONDS
  if processes.started:
    problem = (
      f"started {len(processes.started)} process(es) "
      f"({', '.join(sorted(set(processes.started)))})"
    )
  elif own_cpu > budget:
    problem = f"used {own_cpu:.1f} CPU-seconds (fast-tier budget {budget:g})"
  else:
    return
  report.outcome = "failed"
  report.longrepr = (
    f"{item.nodeid} is in the fast tier but {problem}: "
    "mark it " + " or ".join(f"@pytest.mark.{m}" for m in TIER_MARKERS)
  )


# pytest.ini runs the suite in two processes, a module's tests in one
# (--dist loadscope). These modules go to one process together: the
# "tiny_run" ones share that session fixture, trained once per process; the
# "checkout" ones build from this checkout (sdists, an editable install),
# rewriting its egg-info, or read that egg-info while another builds.
# (Other --dist modes are not grouped.)
SHARED_PROCESS = {
  "export_test.py": "tiny_run",
  "results_test.py": "tiny_run",
  "task_test.py": "tiny_run",
  "colab_test.py": "checkout",
  "install_test.py": "checkout",
  "install_deps_test.py": "checkout",
  "vertex_test.py": "checkout",
}


def _module_of(nodeid):
  """tests/x_test.py::test_y[z] -> x_test.py"""
  return os.path.basename(nodeid.split("::", 1)[0])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
  """--dist loadscope, with SHARED_PROCESS's modules as one scope each."""
  if config.getvalue("dist") != "loadscope":
    return None
  from xdist.scheduler import LoadScopeScheduling

  class ModuleGroups(LoadScopeScheduling):
    def _split_scope(self, nodeid):
      return SHARED_PROCESS.get(_module_of(nodeid), _module_of(nodeid))

  return ModuleGroups(config, log)


def pytest_runtest_setup(item):
  """A module that takes tiny_run without being in SHARED_PROCESS would
  train its own copy in a second process: its tests fail and say so (a
  failed test's report reaches the terminal from an xdist worker, an error
  during a worker's collection does not)."""
  module = _module_of(item.nodeid)
  if (
    "tiny_runs" in getattr(item, "fixturenames", ())
    and SHARED_PROCESS.get(module) != "tiny_run"
  ):
    pytest.fail(
      f"{module} uses the tiny_run fixture: add it to "
      "SHARED_PROCESS in tests/conftest.py",
      pytrace=False,
    )


@pytest.fixture(autouse=True)
def _keep_keras_dtype_policy():
  """A test that trains in-process sets Keras' global dtype policy (the
  run's precision); the next test in this process starts from float32."""
  yield
  keras = sys.modules.get("keras")
  if keras is not None:
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
  """One synthetic-data cache for the whole session (drawn once)."""
  return str(tmp_path_factory.mktemp("cache"))


def cli_env(cache_dir, **extra):
  env = dict(os.environ)
  env.update(
    {
      "XDG_CACHE_HOME": cache_dir,
      "TF_CPP_MIN_LOG_LEVEL": "2",
      "PYTHONPATH": REPO,
    }
  )
  # What a Vertex AI job sets: a test says so when it runs as one.
  for key in (
    "TF_CONFIG",
    "CLUSTER_SPEC",
    "AIP_MODEL_DIR",
    "AIP_CHECKPOINT_DIR",
    "AIP_TENSORBOARD_LOG_DIR",
    "TPU_NAME",
    "CLOUD_ML_TRIAL_ID",
    "CLOUD_ML_HP_METRIC_FILE",
  ):
    env.pop(key, None)
  env.update(extra)
  # None unsets: e.g. TF_CPP_MIN_LOG_LEVEL=None runs a command at its own
  # default log level, as a user does.
  return {key: value for key, value in env.items() if value is not None}


@pytest.fixture
def run_cli(cache_dir):
  """run_cli(module, *args, env=None, timeout=...) -> CompletedProcess."""

  def run(module, *args, env=None, timeout=600, check=False):
    result = subprocess.run(
      [sys.executable, "-m", module, *args],
      cwd=REPO,
      env=cli_env(cache_dir, **(env or {})),
      capture_output=True,
      text=True,
      timeout=timeout,
    )
    if check and result.returncode != 0:
      raise AssertionError(
        f"{module} {args} exited {result.returncode}:\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
      )
    return result

  return run


# Finished tiny runs, shared by every test that only reads what a run wrote
# (outputs, first-run output, evaluate, predict, plots, serving, TFLite
# export): training each once instead of per module saves minutes per suite.
# The precision is always given: `auto` picks bfloat16 on CPUs with
# AVX512_BF16 or AMX and float32 elsewhere, and a test must mean the same on
# both.
TINY_RUN_ARGS = ("--config=tiny", "--profile_steps=4,8")
TinyRun = collections.namedtuple("TinyRun", "model_dir args stdout stderr")


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, cache_dir):
  """tiny_runs(precision) -> TinyRun: `python -m trainer.task --config=tiny
  --precision=PRECISION` (3 epochs, steps 4-8 profiled), run as a user runs
  it (the CLI's own log level), once per session and precision. Read-only:
  tests that write into a run take `copy_run(run.model_dir, ...)`."""
  runs = {}

  def get(precision):
    if precision not in runs:
      model_dir = tmp_path_factory.mktemp(f"tiny_run_{precision}") / "run"
      args = (
        *TINY_RUN_ARGS,
        f"--precision={precision}",
        f"--model_dir={model_dir}",
      )
      env = cli_env(cache_dir, TF_CPP_MIN_LOG_LEVEL=None)
      result = subprocess.run(
        [sys.executable, "-m", "trainer.task", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
      )
      assert result.returncode == 0, (
        result.stdout[-3000:] + result.stderr[-3000:]
      )
      runs[precision] = TinyRun(model_dir, args, result.stdout, result.stderr)
    return runs[precision]

  return get


@pytest.fixture(scope="session")
def tiny_run(tiny_runs):
  """The float32 tiny run."""
  return tiny_runs("float32")


def copy_run(source, destination):
  """A copy of the run at `source` that lives at `destination` (config.json's
  recorded layout points at the copy)."""
  shutil.copytree(source, destination)
  config_path = os.path.join(destination, "config.json")
  with open(config_path) as f:
    config = json.load(f)
  config["model_dir"] = str(destination)
  config["run_dir"] = {
    "checkpoint_root": str(destination),
    "log_dir": os.path.join(str(destination), "logs"),
  }
  with open(config_path, "w") as f:
    json.dump(config, f)
  return destination


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


# Code that needs a fresh interpreter (logical devices, a cluster, a module
# made unimportable) lives in tests/probes/, one module per topic; each probe
# is a function, named "module:function" and run by tests/probes/run.py.
PROBE_RUNNER = os.path.join(REPO, "tests", "probes", "run.py")


def probe_command(name, *args):
  """The command line that runs probe `name` ("module:function") with `args`."""
  return [sys.executable, PROBE_RUNNER, name, *(str(arg) for arg in args)]


def probe_result(stdout):
  lines = [l for l in stdout.splitlines() if l.startswith("PROBE ")]
  assert lines, stdout[-3000:]
  return json.loads(lines[-1][len("PROBE ") :])


def run_probe(name, cache_dir, model_dir, timeout=300, **env):
  """Runs probe `name` in a fresh interpreter; returns what it emit()s.

  Its parameters come as environment variables (`env`, MODEL_DIR)."""
  result = subprocess.run(
    probe_command(name),
    cwd=REPO,
    env=cli_env(cache_dir, MODEL_DIR=str(model_dir), **env),
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  return probe_result(result.stdout)


def run_workers(
  name,
  cache_dir,
  model_dir,
  num_workers=2,
  timeout=300,
  env_per_worker=None,
  **env,
):
  """Runs probe `name` as a multi-worker cluster on 127.0.0.1.

  Every worker's environment has `env` (and MODEL_DIR, TF_CONFIG,
  WORKER_INDEX), then its own entry of `env_per_worker`. Returns each
  worker's emit()ted dict, or raises with every worker's output.
  """
  from launch import cluster  # Ports on 127.0.0.1, as launch.local picks them.

  ports = cluster.free_ports(num_workers)
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  processes = []
  for index in range(num_workers):
    tf_config = json.dumps(
      {"cluster": cluster, "task": {"type": "worker", "index": index}}
    )
    extra = (env_per_worker or [{}] * num_workers)[index]
    processes.append(
      subprocess.Popen(
        probe_command(name),
        cwd=REPO,
        env=cli_env(
          cache_dir,
          MODEL_DIR=str(model_dir),
          TF_CONFIG=tf_config,
          WORKER_INDEX=str(index),
          **{**env, **extra},
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
      )
    )
  outputs = []
  try:
    for process in processes:
      outputs.append(process.communicate(timeout=timeout)[0])
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  failed = [(i, p.returncode) for i, p in enumerate(processes) if p.returncode]
  assert not failed, f"workers exited {failed}:\n" + "\n".join(
    o[-2500:] for o in outputs
  )
  return [probe_result(o) for o in outputs]
