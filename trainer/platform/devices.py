"""The machine's devices and accelerators, as TensorFlow sees them.

`configure_devices` splits the CPU into logical devices (before TensorFlow
initialises); the probes say what TensorFlow was built for, what the machine
has, and why a GPU or TPU is missing: for --require_accelerator, for
trainer.doctor, and for trainer.strategy's choice of strategy and precision.
"""

import ctypes
import glob
import importlib.metadata
import os
import shutil
import subprocess

import tensorflow as tf

from trainer.errors import UserError


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
  if tpu_hint() and not build["libtpu"]:
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
      or (tpu_hint() and build["libtpu"])
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


def tpu_hint():
  """A TPU that is cheap to detect: TPU VM device files or a named TPU.

  Returns:
    TPU_NAME, grpc://COLAB_TPU_ADDR, "local" on a TPU VM, or None.
  """
  if os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR"):
    return (
      os.environ.get("TPU_NAME") or "grpc://" + os.environ["COLAB_TPU_ADDR"]
    )
  if tf.io.gfile.glob("/dev/accel*") or tf.io.gfile.glob("/dev/vfio/[0-9]*"):
    return "local"
  return None


def cpu_flags():
  """The CPU's instruction-set flags from /proc/cpuinfo (empty elsewhere)."""
  try:
    with open("/proc/cpuinfo") as f:
      line = next((line for line in f if line.startswith("flags")), "")
  except OSError:
    return set()
  return set(line.partition(":")[2].split())
