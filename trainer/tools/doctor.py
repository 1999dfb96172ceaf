"""What runs here, and how fast: python -m trainer.doctor [--json] [--expect=gpu|tpu]

The first command on a new VM, Colab runtime or Vertex AI job when
something looks slow or wrong: the TensorFlow and Keras versions, what
TensorFlow was built for (CUDA/cuDNN, libtpu) against what the machine has
(the NVIDIA driver, each CUDA library TensorFlow loads and why one does
not), the GPUs and TPUs TensorFlow sees, the precision `--precision=auto`
picks and why, how gradients are all-reduced, the CPU's vector and matrix
instructions, and a 20-step training micro-benchmark of the seed model.

    python -m trainer.doctor                 # a table
    python -m trainer.doctor --json          # the same as JSON
    python -m trainer.doctor --expect=gpu    # exit 1 with one line if no GPU

The facts come from trainer.platform.devices (the module that knows
devices), the precision from trainer.strategy and the benchmark from
trainer.benchmark's training-step phase, so they are what training sees.
"""

import json
import os
import platform
import sys
import tempfile

from absl import app
from absl import flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FLAGS = flags.FLAGS
flags.DEFINE_bool("json", False, "Print JSON instead of a table.")
flags.DEFINE_enum(
  "expect",
  "none",
  ("none", "gpu", "tpu"),
  "Exit 1 with one line, before anything else, when "
  "TensorFlow cannot use this accelerator.",
)
flags.DEFINE_bool(
  "benchmark", True, "Run the micro-benchmark (use --nobenchmark to skip it)."
)

BENCHMARK_STEPS = 20
BENCHMARK_BATCH = 4  # the seed notebook's: 20 steps take seconds on a CPU
# Instruction sets that decide CPU training speed; bfloat16 pays off only
# with avx512_bf16 or amx_bf16 (what --precision=auto looks for).
_CPU_FEATURES = (
  "sse4_2",
  "avx",
  "avx2",
  "fma",
  "avx512f",
  "avx512bw",
  "avx512_vnni",
  "avx512_bf16",
  "avx512_fp16",
  "amx_tile",
  "amx_int8",
  "amx_bf16",
)


def _cpu_model():
  try:
    with open("/proc/cpuinfo") as f:
      line = next((l for l in f if l.startswith("model name")), "")
  except OSError:
    line = ""
  return line.partition(":")[2].strip() or platform.processor() or "unknown"


def _gpu_details(tf):
  details = []
  for gpu in tf.config.list_physical_devices("GPU"):
    info = tf.config.experimental.get_device_details(gpu)
    details.append(
      {
        "name": gpu.name.replace("/physical_device:", ""),
        "device": info.get("device_name", ""),
        "compute_capability": list(info.get("compute_capability", ())),
      }
    )
  return details


def _all_reduce(gpus, libraries):
  """How `mirrored` and `multi_worker` would sum gradients here."""
  nccl = any(
    lib["name"] == "libnccl.so.2" and lib["loaded"] for lib in libraries
  )
  if not gpus:
    # strategy.get_strategy: CPU replicas cannot use NCCL.
    return {
      "mirrored": "ReductionToOneDevice (CPU devices)",
      "multi_worker": "RING (gRPC)",
      "nccl": nccl,
    }
  if nccl:
    return {"mirrored": "NCCL", "multi_worker": "NCCL", "nccl": nccl}
  return {
    "mirrored": "NCCL, but libnccl.so.2 does not load",
    "multi_worker": "RING (gRPC): libnccl.so.2 does not load",
    "nccl": nccl,
  }


# trainer.benchmark's command line, in a fresh interpreter (it defines absl
# flags of its own, --json too, and a timed step should not share this
# process's TensorFlow), running its `step` phase alone.
_BENCHMARK_STEP = """
import sys
from absl import app
from trainer.tools import benchmark
skip = ",".join(phase for phase in benchmark.PHASES if phase != "step")
app.run(benchmark.main, argv=sys.argv + ["--skip=" + skip])
"""


def _benchmark():
  """Images/s of BENCHMARK_STEPS seed-model training steps on one device
  (in-memory batches through the trainer's own compiled step)."""
  import subprocess
  import time

  start = time.monotonic()
  with tempfile.TemporaryDirectory(prefix="alexnet-doctor-") as scratch:
    out = os.path.join(scratch, "benchmark.json")
    result = subprocess.run(
      [
        sys.executable,
        "-c",
        _BENCHMARK_STEP,
        "--config=cats_vs_dogs",
        "--model=seed",
        "--strategy=one_device",
        f"--global_batch_size={BENCHMARK_BATCH}",
        f"--steps={BENCHMARK_STEPS}",
        "--warmup_steps=2",
        f"--records={BENCHMARK_BATCH * 2}",
        f"--json={out}",
      ],
      capture_output=True,
      text=True,
    )
    if result.returncode != 0:
      return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1]}
    with open(out) as f:
      step = json.load(f)["step"]
  return {
    "model": "seed",
    "steps": BENCHMARK_STEPS,
    "global_batch_size": BENCHMARK_BATCH,
    "images_per_sec": step["images_per_sec"],
    "precision": step["precision"],
    "seconds": time.monotonic() - start,
  }


def _onednn_enabled():
  """Whether TensorFlow runs oneDNN's custom CPU operations here (on by
  default on CPUs with AVX512_VNNI/BF16, AVX_VNNI or AMX; its start-up notice
  is not shown), or None where this TensorFlow does not say."""
  try:
    from tensorflow.python.util import _pywrap_util_port
  except ImportError:
    return None
  return bool(_pywrap_util_port.IsMklEnabled())


def diagnose(run_benchmark=True):
  """Everything the table shows, as a JSON-ready dict."""
  import keras
  import tensorflow as tf

  from trainer import strategy as strategy_lib
  from trainer.platform import devices as devices_lib

  build = devices_lib.tensorflow_build()
  libraries = devices_lib.cuda_libraries(build)
  gpus = _gpu_details(tf)
  tpus = [
    d.name.replace("/physical_device:", "")
    for d in tf.config.list_physical_devices("TPU")
  ]
  tpu_found = bool(tpus) or devices_lib.accelerator_problem("tpu") is None
  precision, reason = strategy_lib.choose_precision(
    "auto", "tpu" if tpu_found else "one_device"
  )
  flags_here = devices_lib.cpu_flags()
  report = {
    "tensorflow": tf.__version__,
    "keras": keras.__version__,
    "python": platform.python_version(),
    "built_for": build,
    "nvidia_driver": devices_lib.nvidia_driver(),
    "cuda_libraries": libraries,
    "devices": devices_lib.visible_devices(),
    "gpus": gpus,
    "tpus": tpus,
    "problems": {
      kind: devices_lib.accelerator_problem(kind) for kind in ("gpu", "tpu")
    },
    "precision": {"auto": precision, "reason": reason},
    "all_reduce": _all_reduce(gpus, libraries),
    "cpu": {
      "model": _cpu_model(),
      "cores": len(os.sched_getaffinity(0)),
      "flags": [f for f in _CPU_FEATURES if f in flags_here],
      "onednn": _onednn_enabled(),
    },
    "benchmark": _benchmark() if run_benchmark else None,
  }
  return report


def format_table(report):
  """The report as aligned `what  value` rows."""
  built = report["built_for"]
  rows = [
    ("TensorFlow", report["tensorflow"]),
    ("Keras", report["keras"]),
    ("Python", report["python"]),
    (
      "built for",
      built["summary"] + (", libtpu" if built["libtpu"] else ", no libtpu"),
    ),
  ]
  rows.append(("NVIDIA driver", report["nvidia_driver"] or "none found"))
  for library in report["cuda_libraries"]:
    state = (
      f"loads ({library['path']})"
      if library["loaded"]
      else f"does not load: {library['error']}"
    )
    rows.append((f"  {library['name']}", state))
  gpus = [
    f"{g['name']} {g['device']} (compute {'.'.join(map(str, g['compute_capability']))})"
    for g in report["gpus"]
  ]
  rows.append(("GPUs", "; ".join(gpus) or "none: " + report["problems"]["gpu"]))
  rows.append(
    (
      "TPUs",
      ", ".join(report["tpus"])
      or (
        "none: " + report["problems"]["tpu"]
        if report["problems"]["tpu"]
        else "this is a TPU VM/runtime (TensorFlow lists them once connected)"
      ),
    )
  )
  rows.append(
    (
      "precision auto",
      f"{report['precision']['auto']} ({report['precision']['reason']})",
    )
  )
  rows.append(
    (
      "all-reduce",
      f"mirrored: {report['all_reduce']['mirrored']}; "
      f"multi_worker: {report['all_reduce']['multi_worker']}",
    )
  )
  cpu = report["cpu"]
  rows.append(("CPU", f"{cpu['model']}, {cpu['cores']} cores"))
  rows.append(("CPU flags", " ".join(cpu["flags"]) or "none of note"))
  rows.append(
    (
      "oneDNN ops",
      {
        True: "on (TF_ENABLE_ONEDNN_OPTS=0 turns them off)",
        False: "off",
        None: "unknown",
      }[cpu["onednn"]],
    )
  )
  bench = report["benchmark"]
  if bench and "error" in bench:
    rows.append(("benchmark", f"failed: {bench['error']}"))
  elif bench:
    rows.append(
      (
        "benchmark",
        f"{bench['images_per_sec']:.1f} images/s: "
        f"{bench['model']} model, {bench['steps']} training steps of "
        f"{bench['global_batch_size']} images, {bench['precision']}, "
        f"one device ({bench['seconds']:.0f} s with compilation)",
      )
    )
  width = max(len(name) for name, _ in rows)
  return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}", exitcode=2)
  from trainer import startup

  startup.start_tensorflow()  # The same start-up lines on every CPU kind.
  from trainer.platform import devices as devices_lib

  problem = devices_lib.accelerator_problem(FLAGS.expect)
  if problem:
    print(f"Error: --expect={FLAGS.expect}: {problem}", file=sys.stderr)
    return 1
  report = diagnose(FLAGS.benchmark)
  print(json.dumps(report, indent=2) if FLAGS.json else format_table(report))
  return 0


if __name__ == "__main__":
  app.run(main)
