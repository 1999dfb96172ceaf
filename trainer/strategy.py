"""Builds the tf.distribute strategy and picks the precision.

The only module that touches devices and clusters. Call `configure_devices`
before anything else initialises TensorFlow's runtime (logical CPU devices can
only be set up before that), then `get_strategy`, then `choose_precision`.
"""

from __future__ import annotations

from collections.abc import Sequence
import ctypes
import dataclasses
import glob
import importlib.metadata
import json
import os
import shutil
import subprocess

import keras
import tensorflow as tf

from trainer import config as config_lib
from trainer.errors import UserError
from trainer.errors import describe


@dataclasses.dataclass(frozen=True)
class StrategyInfo:
  """What was built and why (for the banner and the outputs)."""

  strategy: tf.distribute.Strategy
  name: str  # one_device | mirrored | multi_worker | tpu
  reason: str  # why 'auto' chose it, or "requested"
  devices: tuple
  is_chief: bool
  task: str  # e.g. "chief:0", "worker:1", "local"
  num_input_pipelines: int = 1  # one per worker (or per TPU host)

  @property
  def num_replicas(self) -> int:
    return self.strategy.num_replicas_in_sync


def configure_devices(cpu_devices: int = 0) -> None:
  """Splits the host CPU into logical devices; must run before TF initialises.

  Raises:
    UserError: the runtime is already initialised.
  """
  if cpu_devices <= 1:
    return
  cpu = tf.config.list_physical_devices("CPU")[0]
  try:
    tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices
    )
  except RuntimeError as e:
    existing = len(tf.config.list_logical_devices("CPU"))
    if existing != cpu_devices:
      raise UserError(
        f"--cpu_devices={cpu_devices} must be set before "
        f"TensorFlow starts; it already has {existing} CPU "
        f"device(s) ({e})"
      ) from None


# ----------------------------------------------------------------------------
# What TensorFlow was built for, what the machine has, and why an
# accelerator is missing (for --require_accelerator and trainer.doctor).

# The CUDA 12 libraries TensorFlow loads at start (soname major versions; the
# cuDNN one comes from the build info). libcuda is the driver's.
_CUDA12_LIBRARIES = (
  "libcuda.so.1",
  "libcudart.so.12",
  "libcublas.so.12",
  "libcublasLt.so.12",
  "libcufft.so.11",
  "libcusolver.so.11",
  "libcusparse.so.12",
)
_TPU_DISTRIBUTIONS = ("libtpu", "libtpu-nightly", "tensorflow-tpu")


def tensorflow_build():
  """What this TensorFlow was built for.

  Returns:
    {"cuda": "12.3" or None, "cudnn": "8" or None, "libtpu": bool,
     "summary": "CUDA 12.3 and cuDNN 8" or "a CPU-only build"}.
  """
  info = tf.sysconfig.get_build_info()
  cuda = info.get("cuda_version") if info.get("is_cuda_build") else None
  cudnn = info.get("cudnn_version") if cuda else None
  summary = f"CUDA {cuda} and cuDNN {cudnn}" if cuda else "a CPU-only build"
  return {
    "cuda": cuda,
    "cudnn": cudnn,
    "libtpu": _has_libtpu(),
    "summary": summary,
  }


def _has_libtpu():
  for name in _TPU_DISTRIBUTIONS:
    try:
      importlib.metadata.version(name)
      return True
    except importlib.metadata.PackageNotFoundError:
      pass
  return False


def nvidia_driver():
  """The NVIDIA driver version, or None when the machine has none."""
  if shutil.which("nvidia-smi"):
    try:
      result = subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=30,
      )
      if result.returncode == 0 and result.stdout.strip():
        return result.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
      pass
  try:
    with open("/proc/driver/nvidia/version") as f:
      words = f.readline().split()
  except OSError:
    return None
  # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug..."
  return next((w for w in words if w[:1].isdigit() and "." in w), "unknown")


def cuda_libraries(build=None):
  """Tries to load each CUDA/cuDNN/NCCL library the build expects, as TF would.

  TensorFlow finds them on the loader's path or in the nvidia-* pip packages
  beside it (tensorflow[and-cuda]).

  Returns:
    [{"name": soname, "loaded": bool, "path": where or None, "error": why
      or None}], or [] for a CPU-only build.
  """
  build = build or tensorflow_build()
  if not build["cuda"]:
    return []
  names = list(_CUDA12_LIBRARIES)
  if build["cudnn"]:
    names.insert(2, f"libcudnn.so.{build['cudnn'].split('.')[0]}")
  names.append("libnccl.so.2")
  site = os.path.dirname(os.path.dirname(tf.__file__))
  results = []
  for name in names:
    candidates = glob.glob(os.path.join(site, "nvidia", "*", "lib", name))
    error = None
    for candidate in candidates + [name]:
      try:
        ctypes.CDLL(candidate)
        results.append(
          {
            "name": name,
            "loaded": True,
            "error": None,
            "path": candidate if candidate != name else "system",
          }
        )
        break
      except OSError as e:
        error = str(e).split(": ", 1)[-1]
    else:
      results.append(
        {"name": name, "loaded": False, "path": None, "error": error}
      )
  return results


def visible_devices():
  """Physical device names TensorFlow lists, e.g. ["CPU:0", "GPU:0"]."""
  return [
    d.name.replace("/physical_device:", "")
    for d in tf.config.list_physical_devices()
  ]


def _gpu_missing_cause(build):
  if not build["cuda"]:
    return (
      "this is a CPU-only TensorFlow (e.g. tensorflow-cpu, or a CPU wheel "
      "installed over the image's GPU build); reinstall the image's "
      "TensorFlow or pip install 'tensorflow[and-cuda]'"
    )
  driver = nvidia_driver()
  if driver is None:
    return (
      "no NVIDIA driver on this machine (no nvidia-smi, no "
      "/proc/driver/nvidia/version): it has no GPU attached, or its "
      "driver is not installed or not mounted into this container"
    )
  missing = [
    lib["name"]
    for lib in cuda_libraries(build)
    if not lib["loaded"] and lib["name"] != "libnccl.so.2"
  ]
  if missing:
    return (
      f"CUDA/cuDNN libraries this TensorFlow needs do not load: "
      f"{', '.join(missing)} (a TensorFlow newer than the image's CUDA "
      "was installed without its libraries: keep the image's "
      f"TensorFlow, or pip install 'tensorflow[and-cuda]=="
      f"{tf.__version__}')"
    )
  return (
    "the driver and libraries load, yet TensorFlow lists no GPU: the "
    f"driver ({driver}) may be older than CUDA {build['cuda']} "
    "needs, or CUDA_VISIBLE_DEVICES hides the GPUs"
  )


def _tpu_missing_cause(build):
  if _tpu_hint() and not build["libtpu"]:
    return (
      "this machine has a TPU but this TensorFlow has no TPU support "
      "(no libtpu / tensorflow-tpu): the CPU/GPU tensorflow wheel "
      "replaced tensorflow-tpu; reinstall tensorflow-tpu and install "
      "this package with --no-deps"
    )
  return (
    "this is not a TPU VM or TPU runtime (no /dev/accel* or /dev/vfio "
    "devices, TPU_NAME or COLAB_TPU_ADDR)"
  )


def accelerator_problem(accelerator, tpu=""):
  """Why TensorFlow cannot use `accelerator` here, or None when it can.

  Cheap (no TPU connection): a TPU counts when TensorFlow lists one, when
  this is a TPU VM or runtime with libtpu, or when `tpu` names a remote one
  (get_strategy then reports whether it is reachable).

  Args:
    accelerator: none | gpu | tpu.
    tpu: the --tpu flag.

  Returns:
    One line: what TensorFlow sees, what it was built for, the likely cause.
  """
  if accelerator == "none":
    return None
  build = tensorflow_build()
  if accelerator == "gpu":
    if tf.config.list_physical_devices("GPU"):
      return None
    cause = _gpu_missing_cause(build)
  else:
    if (
      tf.config.list_physical_devices("TPU")
      or tpu not in ("", "local")
      or (_tpu_hint() and build["libtpu"])
    ):
      return None
    cause = _tpu_missing_cause(build)
  devices = visible_devices()
  if all(d.startswith("CPU") for d in devices):
    seen = f"only {', '.join(devices) or 'no devices'}"
  else:
    seen = f"it sees {', '.join(devices)}"
  built_for = build["summary"] + (" with libtpu" if build["libtpu"] else "")
  return (
    f"TensorFlow {tf.__version__} sees no {accelerator.upper()}, "
    f"{seen}; it was built for {built_for}; likely cause: {cause}"
  )


def check_accelerator(accelerator, tpu=""):
  """--require_accelerator: stop before any work when it is missing.

  Raises:
    UserError: one line saying what TF sees, what it was built for and why.
  """
  problem = accelerator_problem(accelerator, tpu)
  if problem:
    raise UserError(f"--require_accelerator={accelerator}: {problem}")


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


def _num_cluster_tasks(tf_config):
  if not tf_config:
    return 0
  return sum(
    len(v)
    for k, v in tf_config.get("cluster", {}).items()
    if k in ("chief", "worker")
  )


def _tpu_hint():
  """A TPU that is cheap to detect: TPU VM device files or a named TPU."""
  if os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR"):
    return (
      os.environ.get("TPU_NAME") or "grpc://" + os.environ["COLAB_TPU_ADDR"]
    )
  if tf.io.gfile.glob("/dev/accel*") or tf.io.gfile.glob("/dev/vfio/[0-9]*"):
    return "local"
  return None


def _pick_devices(device_list):
  """Resolves --devices (or all devices of the best kind) to names."""
  available = [d.name for d in tf.config.list_logical_devices()]
  if device_list:
    wanted = [d.strip() for d in device_list.split(",") if d.strip()]
    normalised = {
      d.lower()
      .replace("/device:", "/")
      .replace("/job:localhost/replica:0/task:0", ""): d
      for d in available
    }
    missing = [
      d for d in wanted if d.lower().replace("/device:", "/") not in normalised
    ]
    if missing:
      raise UserError(
        f"--devices: {', '.join(missing)} not found; this "
        f"machine has {', '.join(sorted(normalised)) or 'none'}"
      )
    return tuple(normalised[d.lower().replace("/device:", "/")] for d in wanted)
  gpus = tf.config.list_logical_devices("GPU")
  if gpus:
    return tuple(d.name for d in gpus)
  return tuple(d.name for d in tf.config.list_logical_devices("CPU"))


def check_remote_tpu_paths(strategy, tpu, paths):
  """A remote TPU (a name or grpc:// address) reads only gs:// paths.

  Raises:
    UserError: naming the first local path, before anything starts.
  """
  if strategy != "tpu" or tpu in ("", "local") or not paths:
    return
  if not paths.get("--train_data"):
    raise UserError(
      f"--tpu={tpu} is a remote TPU, which cannot read the "
      "built-in synthetic set on this disk; prepare it to gs:// "
      "(python -m trainer.prepare --source=synthetic "
      "--out=gs://...) and pass --train_data"
    )
  for flag, path in paths.items():
    if path and not path.startswith("gs://"):
      raise UserError(
        f"{flag}={path} is on this machine, but --tpu={tpu} is "
        "a remote TPU, which reads only gs:// paths"
      )


def _connect_tpu(tpu):
  resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
  if tpu not in ("", "local"):
    tf.config.experimental_connect_to_cluster(resolver)
  tf.tpu.experimental.initialize_tpu_system(resolver)
  return tf.distribute.TPUStrategy(resolver)


def _multi_worker(tf_config, collective_timeout_secs):
  # TF reads TF_CONFIG itself; set it when the cluster came from CLUSTER_SPEC.
  os.environ["TF_CONFIG"] = json.dumps(tf_config)
  options = tf.distribute.experimental.CommunicationOptions(
    # A collective that waits this long means a peer is gone: fail, don't hang.
    timeout_seconds=float(collective_timeout_secs) or None
  )
  return tf.distribute.MultiWorkerMirroredStrategy(
    communication_options=options
  )


def get_strategy(
  strategy: str = "auto",
  devices: str = "",
  tpu: str = "",
  collective_timeout_secs: int = 600,
  remote_tpu_paths: Sequence[str] | None = None,
) -> StrategyInfo:
  """Builds the requested strategy.

  Args:
    strategy: auto | one_device | mirrored | multi_worker | tpu.
    devices: comma-separated device names for one_device/mirrored.
    tpu: 'local', a TPU name or grpc:// address for tpu.
    collective_timeout_secs: multi_worker collective timeout.
    remote_tpu_paths: {flag: path} the run reads and writes; checked (before
      connecting) when the TPU, requested or found by 'auto', is remote.

  Returns:
    A StrategyInfo.

  Raises:
    UserError: the strategy can't be had here (one line, says why).
  """
  tf_config = cluster_spec_from_env()
  reason = "requested"
  if strategy == "auto":
    tpu_hint = tpu or _tpu_hint()
    if tpu_hint:
      strategy, tpu, reason = "tpu", tpu_hint, f"auto: TPU found ({tpu_hint})"
    elif _num_cluster_tasks(tf_config) > 1:
      strategy, reason = (
        "multi_worker",
        (f"auto: TF_CONFIG names {_num_cluster_tasks(tf_config)} tasks"),
      )
    elif len(tf.config.list_logical_devices("GPU")) > 1:
      strategy, reason = "mirrored", "auto: 2+ GPUs"
    elif len(tf.config.list_logical_devices("GPU")) == 1:
      strategy, reason = "one_device", "auto: one GPU"
    elif len(tf.config.list_logical_devices("CPU")) > 1:
      strategy, reason = "mirrored", "auto: several logical CPU devices"
    else:
      strategy, reason = (
        "one_device",
        "auto: no GPU or TPU found, using the CPU",
      )

  task, is_chief, num_pipelines = "local", True, 1
  if strategy == "tpu":
    tpu = tpu or _tpu_hint()
    if not tpu:
      raise UserError(
        "--strategy=tpu: no TPU found (no /dev/accel*, TPU_NAME "
        "or COLAB_TPU_ADDR); pass --tpu=local|NAME|grpc://HOST:PORT"
      )
    check_remote_tpu_paths("tpu", tpu, remote_tpu_paths or {})
    try:
      built = _connect_tpu(tpu)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
      raise UserError(
        f"--strategy=tpu --tpu={tpu}: cannot reach the TPU ({describe(e)})"
      ) from None
    device_names = tuple(d.name for d in tf.config.list_logical_devices("TPU"))
    # TPUStrategy has one client, this process, even on a pod slice: it is the
    # chief (TPUClusterResolver's task_id is always 0), and each host runs an
    # input pipeline, not a trainer.
    num_pipelines = built.extended.num_hosts
  elif strategy == "multi_worker":
    if _num_cluster_tasks(tf_config) < 1:
      raise UserError(
        "--strategy=multi_worker needs TF_CONFIG (or Vertex AI's "
        "CLUSTER_SPEC) naming the cluster; use "
        "`python -m launch.local --workers=N` to run locally"
      )
    built = _multi_worker(tf_config, collective_timeout_secs)
    resolver = built.cluster_resolver
    task = f"{resolver.task_type}:{resolver.task_id}"
    is_chief = _is_chief(resolver.task_type, resolver.task_id, tf_config)
    device_names = tuple(built.extended.worker_devices)
    num_pipelines = _num_cluster_tasks(tf_config)
  else:
    device_names = _pick_devices(devices)
    if strategy == "mirrored" and not devices and len(device_names) == 1:
      reason = (
        "requested, but no GPU found: one replica on the CPU; "
        "--cpu_devices=N splits the CPU into N replicas"
      )
    if strategy == "one_device":
      if len(device_names) != 1 and devices:
        raise UserError(
          f"--strategy=one_device takes one device, got --devices={devices}"
        )
      device_names = device_names[:1]
      built = tf.distribute.OneDeviceStrategy(device_names[0])
    else:
      # Several CPU 'replicas' cannot use NCCL; cross-device ops default to it
      # only when every device is a GPU.
      cross_device_ops = None
      if not all("GPU" in d.upper() for d in device_names):
        cross_device_ops = tf.distribute.ReductionToOneDevice()
      built = tf.distribute.MirroredStrategy(
        list(device_names), cross_device_ops=cross_device_ops
      )
  return StrategyInfo(
    built, strategy, reason, device_names, is_chief, task, num_pipelines
  )


def distribute_datasets(strategy, dataset_fn):
  """`strategy.distribute_datasets_from_function(dataset_fn)`, except on one
  CPU device, where the dataset is iterated as it is.

  There OneDeviceStrategy would feed its replica through a
  MultiDeviceIterator, whose per-device generator tf.data cannot optimise:
  each new iterator (every epoch) prints "Input of GeneratorDatasetOp::Dataset
  will not be optimized". The batches are already on the host, where the
  replica computes, so the same batches come in the same order without it.
  """
  if (
    isinstance(strategy, tf.distribute.OneDeviceStrategy)
    and tf.DeviceSpec.from_string(
      strategy.extended.worker_devices[0]
    ).device_type
    == "CPU"
  ):
    return dataset_fn(tf.distribute.InputContext())
  return strategy.distribute_datasets_from_function(dataset_fn)


def _is_chief(task_type, task_id, tf_config):
  if task_type == "chief":
    return True
  has_chief = "chief" in tf_config.get("cluster", {})
  return not has_chief and task_type == "worker" and task_id == 0


def cpu_flags():
  """The CPU's instruction-set flags from /proc/cpuinfo (empty elsewhere)."""
  try:
    with open("/proc/cpuinfo") as f:
      line = next((line for line in f if line.startswith("flags")), "")
  except OSError:
    return set()
  return set(line.partition(":")[2].split())


def _cpu_has_fast_bfloat16():
  return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def choose_precision(requested: str, strategy_name: str) -> tuple[str, str]:
  """Resolves --precision=auto to a Keras dtype policy name.

  Returns:
    (policy_name, reason).
  """
  if requested == "mixed_float16" and strategy_name == "tpu":
    raise UserError(
      "--precision=mixed_float16 on a TPU: TPUs compute in "
      "bfloat16 (no loss scaling needed); use --precision="
      "mixed_bfloat16 or auto"
    )
  if requested != "auto":
    return requested, "requested"
  if strategy_name == "tpu":
    return "mixed_bfloat16", "auto: TPU"
  gpus = tf.config.list_physical_devices("GPU")
  if gpus:
    capability = tf.config.experimental.get_device_details(gpus[0]).get(
      "compute_capability", (0, 0)
    )
    if capability >= (8, 0):
      return "mixed_bfloat16", f"auto: GPU compute capability {capability}"
    if capability >= (7, 0):
      return "mixed_float16", f"auto: GPU compute capability {capability}"
    return "float32", f"auto: GPU compute capability {capability} < 7.0"
  if _cpu_has_fast_bfloat16():
    return "mixed_bfloat16", "auto: CPU has AVX512_BF16/AMX"
  return "float32", "auto: CPU without bfloat16 instructions"


def choose_all_reduce_dtype(requested, precision, strategy_name):
  """Resolves --all_reduce_precision to a dtype name.

  Under mixed_bfloat16 the gradients of bfloat16 kernels are bfloat16 values
  cast up, so sending them as bfloat16 loses only the rounding of the
  float32 gradients (BatchNorm, the output layer) and one rounding per sum;
  it halves what multi_worker sends between machines every step.
  """
  if requested != "auto":
    return requested
  if strategy_name == "multi_worker" and precision == "mixed_bfloat16":
    return "bfloat16"
  return "float32"


def set_precision(policy_name):
  keras.mixed_precision.set_global_policy(policy_name)


def banner(
  info,
  precision,
  precision_reason,
  global_batch_size,
  all_reduce_dtype="float32",
):
  """The one line that says how this process will train."""
  per_replica = global_batch_size // info.num_replicas
  devices = ",".join(d.split("device:")[-1] for d in info.devices)
  all_reduce = (
    f"all_reduce={all_reduce_dtype} " if info.num_replicas > 1 else ""
  )
  return (
    f"task={info.task} chief={info.is_chief} strategy={info.name} "
    f"({info.reason}) replicas={info.num_replicas} devices=[{devices}] "
    f"global_batch={global_batch_size} per_replica_batch={per_replica} "
    f"precision={precision} ({precision_reason}) {all_reduce}"
    f"tf={tf.__version__} keras={keras.__version__}"
  )


@dataclasses.dataclass(frozen=True)
class Runtime:
  """Everything about how this process computes, decided once per run."""

  info: StrategyInfo
  precision: str  # a Keras dtype policy name, already set
  precision_reason: str
  all_reduce_dtype: str
  image_size: int
  per_replica_batch_size: int

  def banner(self, global_batch_size: int) -> str:
    return banner(
      self.info,
      self.precision,
      self.precision_reason,
      global_batch_size,
      self.all_reduce_dtype,
    )


def set_up(
  config: config_lib.Config, remote_tpu_paths: Sequence[str] | None = None
) -> Runtime:
  """Devices, strategy, batch split, precision and image size for `config`.

  The one setup the trainer, evaluation and the benchmark share. Call before
  anything else initialises TensorFlow's runtime.

  Raises:
    UserError: the strategy can't be had, or the batch does not divide.
  """
  configure_devices(config.cpu_devices)
  check_accelerator(config.require_accelerator, config.tpu)
  info = get_strategy(
    config.strategy,
    config.devices,
    config.tpu,
    config.collective_timeout_secs,
    remote_tpu_paths=remote_tpu_paths,
  )
  replicas = info.num_replicas
  if config.global_batch_size % replicas:
    raise UserError(
      f"--global_batch_size={config.global_batch_size} is not "
      f"divisible by the {replicas} replicas of strategy "
      f"{info.name}"
    )
  precision, reason = choose_precision(config.precision, info.name)
  set_precision(precision)
  all_reduce_dtype = choose_all_reduce_dtype(
    config.all_reduce_precision, precision, info.name
  )
  return Runtime(
    info,
    precision,
    reason,
    all_reduce_dtype,
    config_lib.image_size(config),
    config.global_batch_size // replicas,
  )
