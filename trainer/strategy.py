"""Builds the tf.distribute strategy and picks the precision.

Call `configure_devices` before anything else initialises TensorFlow's
runtime (logical CPU devices can only be set up before that), then
`get_strategy`, then `choose_precision`; `set_up` does all three for a
Config. What the machine has and which cluster this process is in come from
trainer.platform (devices, cluster).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import json
import os

import keras
import tensorflow as tf

from trainer import config as config_lib
from trainer.errors import UserError
from trainer.errors import describe
from trainer.platform import cluster as cluster_lib
from trainer.platform import devices as devices_lib

# Kept for callers: trainer.train resolves --data_service through
# strategy_lib.data_service_address, and configure_devices is the first step
# of the set-up above. Both live in trainer.platform now.
from trainer.platform.cluster import data_service_address  # noqa: F401
from trainer.platform.devices import configure_devices  # noqa: F401


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


def _choose_auto(tpu, tf_config):
  """What --strategy=auto means here: (strategy, tpu, reason)."""
  tpu_hint = tpu or devices_lib.tpu_hint()
  if tpu_hint:
    return "tpu", tpu_hint, f"auto: TPU found ({tpu_hint})"
  tasks = cluster_lib.num_cluster_tasks(tf_config)
  if tasks > 1:
    return "multi_worker", tpu, f"auto: TF_CONFIG names {tasks} tasks"
  if len(tf.config.list_logical_devices("GPU")) > 1:
    return "mirrored", tpu, "auto: 2+ GPUs"
  if len(tf.config.list_logical_devices("GPU")) == 1:
    return "one_device", tpu, "auto: one GPU"
  if len(tf.config.list_logical_devices("CPU")) > 1:
    return "mirrored", tpu, "auto: several logical CPU devices"
  return "one_device", tpu, "auto: no GPU or TPU found, using the CPU"


def _build_tpu(tpu, reason, remote_tpu_paths):
  """TPUStrategy on `tpu` (or the one found here), connected."""
  tpu = tpu or devices_lib.tpu_hint()
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
  return StrategyInfo(
    built, "tpu", reason, device_names, True, "local", num_pipelines
  )


def _build_multi_worker(tf_config, reason, collective_timeout_secs):
  """MultiWorkerMirroredStrategy over the cluster `tf_config` names."""
  if cluster_lib.num_cluster_tasks(tf_config) < 1:
    raise UserError(
      "--strategy=multi_worker needs TF_CONFIG (or Vertex AI's "
      "CLUSTER_SPEC) naming the cluster; use "
      "`python -m launch.local --workers=N` to run locally"
    )
  # TF reads TF_CONFIG itself; set it when the cluster came from CLUSTER_SPEC.
  os.environ["TF_CONFIG"] = json.dumps(tf_config)
  options = tf.distribute.experimental.CommunicationOptions(
    # A collective that waits this long means a peer is gone: fail, don't hang.
    timeout_seconds=float(collective_timeout_secs) or None
  )
  built = tf.distribute.MultiWorkerMirroredStrategy(
    communication_options=options
  )
  resolver = built.cluster_resolver
  return StrategyInfo(
    built,
    "multi_worker",
    reason,
    tuple(built.extended.worker_devices),
    cluster_lib.is_chief(resolver.task_type, resolver.task_id, tf_config),
    f"{resolver.task_type}:{resolver.task_id}",
    cluster_lib.num_cluster_tasks(tf_config),
  )


def _build_local(strategy, devices, reason):
  """one_device or mirrored on this process's own devices."""
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
  return StrategyInfo(built, strategy, reason, device_names, True, "local", 1)


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
  tf_config = cluster_lib.cluster_spec_from_env()
  reason = "requested"
  if strategy == "auto":
    strategy, tpu, reason = _choose_auto(tpu, tf_config)
  if strategy == "tpu":
    return _build_tpu(tpu, reason, remote_tpu_paths)
  if strategy == "multi_worker":
    return _build_multi_worker(tf_config, reason, collective_timeout_secs)
  return _build_local(strategy, devices, reason)


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


def _cpu_has_fast_bfloat16():
  return bool(devices_lib.cpu_flags() & {"avx512_bf16", "amx_bf16"})


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
  devices_lib.configure_devices(config.cpu_devices)
  devices_lib.check_accelerator(config.require_accelerator, config.tpu)
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
