"""The one source of truth for training options.

`Config` is a typed, frozen dataclass. Each field carries its help text and,
where the values are a closed set, its choices. The command-line flags of
`python -m trainer.task` are generated from these fields, named experiment
configs in `configs/` are `Config` instances, and the resolved config is
written to the model dir as `config.json`.
"""

import dataclasses
import json
import re

from trainer.errors import UsageError
from trainer.errors import UserError
from trainer.errors import describe

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
ALL_REDUCE_PRECISIONS = ("auto", "float32", "bfloat16")
EXPORT_PRECISIONS = ("float32", "training")
# Every model variant and its input side in pixels (the paper's 227 makes
# conv1 'valid' exact); trainer/model.py builds them.
MODEL_IMAGE_SIZES = {"seed": 224, "seed_same": 224, "original": 227, "tiny": 32}
MODELS = tuple(MODEL_IMAGE_SIZES)
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "seed", "cosine", "step", "plateau")
AUGMENTATIONS = ("random_resized_crop", "crop_flip", "resize", "randaugment")
SCHEMAS = ("auto", "imagenet", "tfds")
MONITORS = ("loss", "val_loss", "val_accuracy")
NAN_POLICIES = ("error", "rollback")
ACCELERATORS = ("none", "gpu", "tpu")
# What every epoch's record in metrics.jsonl can hold for a tuning job to
# optimize (auc: binary runs only).
HYPERTUNE_METRICS = (
  "loss",
  "accuracy",
  "auc",
  "val_loss",
  "val_accuracy",
  "val_auc",
)

# What best/ can keep the best epoch of: "loss" fields are minimised, the
# others maximised (top5: 5+ classes; auc: binary runs).
BEST_METRICS = (
  "val_accuracy",
  "val_top5_accuracy",
  "val_loss",
  "val_auc",
  "accuracy",
  "top5_accuracy",
  "loss",
  "auc",
)


# The key of config.json that records the run's layout (outputs.RunDir).
RUN_DIR_KEY = "run_dir"
# The key of config.json that records what `auto` resolved to on the machine
# that wrote the checkpoints (the precision: mixed_float16 adds a
# LossScaleOptimizer's variables, and any other change breaks a bit-exact
# resume).
RESOLVED_KEY = "resolved"


def _option(default, help, choices=None, section="Training", minimum=None):
  # `help`, `choices` and `minimum` live in field metadata so flags, docs and
  # validation all read the same facts.
  return dataclasses.field(
    default=default,
    metadata={
      "help": help,
      "choices": choices,
      "section": section,
      "minimum": minimum,
    },
  )


@dataclasses.dataclass(frozen=True)
class Config:
  """A complete, resolved training experiment."""

  # --- Experiment
  config: str = _option(
    "",
    "A named experiment from configs/ (an unknown "
    "name lists them), a config.json a run wrote (an "
    "exact re-run: the run's every value), or a Python "
    "config module (a .py file defining get_config() or "
    "CONFIG). Its values are the defaults of every other "
    "flag. config.json records it (a re-run from a "
    "config.json keeps the name that file records).",
    section="Experiment",
  )

  # --- Model
  model: str = _option(
    "seed",
    "AlexNet variant: 'seed' (the Cats vs Dogs "
    "notebook's BatchNorm AlexNet, 21.6M params), "
    "'seed_same' (its code listing, 'same' padding, 46.8M), "
    "'original' (Krizhevsky 2012 with LRN, 62.4M at 1000 "
    "classes), 'tiny' (for tests).",
    MODELS,
    "Model",
  )
  num_classes: int = _option(
    1,
    "1 = one sigmoid unit and binary cross-entropy "
    "(the seed); 2+ = softmax and sparse categorical "
    "cross-entropy.",
    section="Model",
    minimum=1,
  )
  image_size: int = _option(
    0,
    "Input side in pixels; 0 = the model's own "
    "(224 seed, 227 original, 32 tiny).",
    section="Model",
    minimum=0,
  )
  dropout_rate: float = _option(
    0.5, "Dropout after each hidden dense layer.", section="Model"
  )
  batch_norm: str = _option(
    "fused",
    "'fused': one fused kernel, each replica "
    "normalises with its own batch's moments and the "
    "moving statistics take the global batch's "
    "(same model everywhere; fastest). "
    "'synchronized': Keras' synchronized BatchNorm, "
    "moments over the global batch (slower).",
    ("fused", "synchronized"),
    "Model",
  )
  batch_norm_momentum: float = _option(
    0.99,
    "BatchNorm moving-average "
    "momentum (Keras' default, as the "
    "seed); lower it for runs of only a "
    "few hundred steps.",
    section="Model",
  )
  init_from: str = _option(
    "",
    "Warm start: a run dir (its best checkpoint, "
    "else its latest), a checkpoint prefix "
    "(DIR/checkpoints/ckpt-N) or a .keras file, local "
    "or gs://. Loads every layer whose name and weight "
    "shapes match; the rest (e.g. a head for another "
    "--num_classes) starts fresh. Ignored when "
    "--model_dir already holds checkpoints: that run "
    "resumes (its step-0 checkpoint already holds the "
    "warm-started weights).",
    section="Model",
  )
  freeze: str = _option(
    "",
    "Comma-separated layer names to keep fixed "
    "(e.g. conv1,bn1,conv2): not trained, BatchNorm in "
    "inference mode.",
    section="Model",
  )
  train_from: str = _option(
    "",
    "Freeze every layer with weights before this "
    "one (in model order) and train the rest; "
    "instead of --freeze.",
    section="Model",
  )

  # --- Data
  train_data: str = _option(
    "",
    "Training TFRecords: a file pattern or a "
    "directory, local or gs://. Empty = the built-in "
    "synthetic two-class set.",
    section="Data",
  )
  eval_data: str = _option(
    "",
    "Validation TFRecords (pattern or directory). "
    "Empty with empty --train_data = the synthetic "
    "validation split; empty otherwise = no validation.",
    section="Data",
  )
  schema: str = _option(
    "auto",
    "Record layout: 'imagenet' (image/encoded, "
    "image/class/label), 'tfds' (image, label), or 'auto' "
    "= detect from the first record.",
    SCHEMAS,
    "Data",
  )
  label_offset: int = _option(
    0,
    "Subtracted from every stored label (1 for "
    "the classic ImageNet TFRecords, whose labels "
    "start at 1).",
    section="Data",
    minimum=0,
  )
  augment: str = _option(
    "random_resized_crop",
    "Training augmentation: "
    "'random_resized_crop' (fused crop-decode + flip), "
    "'crop_flip' (the paper: shorter side to 256/224 of "
    "the input, random crop, flip), 'resize' (the seed: "
    "plain resize, no augmentation), 'randaugment' "
    "(random_resized_crop, flip, then RandAugment: 2 "
    "ops at --randaugment_magnitude).",
    AUGMENTATIONS,
    "Data",
  )
  shuffle_buffer: int = _option(
    2048,
    "Records held in the shuffle buffer (encoded bytes, before decoding).",
    section="Data",
    minimum=0,
  )
  shards_per_segment: int = _option(
    16,
    "Training files per input segment: each epoch reads its shuffled "
    "files in segments of this many, each shuffled on its own (its "
    "shuffle buffer drains at its end), so a resumed run re-reads at most "
    "one segment to reach its place. 0 = the whole epoch is one segment.",
    section="Data",
    minimum=0,
  )
  skip_corrupt: bool = _option(
    False,
    "Skip undecodable records and count them "
    "instead of failing. Breaks --deterministic "
    "resumption only when records are skipped.",
    section="Data",
  )
  train_examples: int = _option(
    0,
    "Examples in --train_data; 0 = from the "
    "manifest beside the files (trainer.prepare "
    "writes one), else counted once by reading "
    "every record and remembered in the model dir.",
    section="Data",
    minimum=0,
  )
  eval_examples: int = _option(
    0,
    "Examples in --eval_data; 0 = as for --train_examples.",
    section="Data",
    minimum=0,
  )
  synthetic_train_examples: int = _option(
    2048,
    "Size of the built-in synthetic training split.",
    section="Data",
    minimum=1,
  )
  synthetic_eval_examples: int = _option(
    512,
    "Size of the built-in synthetic validation split.",
    section="Data",
    minimum=0,
  )
  synthetic_dir: str = _option(
    "",
    "Where the synthetic set is written once "
    "and reused; empty = "
    "$XDG_CACHE_HOME/alexnet_tf/synthetic.",
    section="Data",
  )
  data_service: str = _option(
    "",
    "grpc://HOST:PORT of a tf.data service "
    "dispatcher: decoding and augmentation run on "
    "its workers instead of this host's CPUs; "
    "'vertex' = the dispatcher in this Vertex AI "
    "job's worker pool 2 (launch.vertex "
    "--data_service_workers).",
    section="Data",
  )
  deterministic: bool = _option(
    False,
    "Reproducible runs: op determinism, "
    "seeded and ordered input. Slower input "
    "pipeline.",
    section="Data",
  )
  randaugment_magnitude: int = _option(
    9,
    "--augment=randaugment: the "
    "magnitude M of its 2 ops per image, "
    "0..10 (timm's and Model Garden's "
    "scale).",
    section="Data",
    minimum=0,
  )
  mixup_alpha: float = _option(
    0.0,
    "Mixup: blend each replica's batch with "
    "a permutation of itself, weight ~ Beta(alpha, "
    "alpha) per batch, targets mixed alike (on "
    "the device); 0 = off. timm's ImageNet "
    "recipes use 0.2-0.8.",
    section="Data",
    minimum=0,
  )
  cutmix_alpha: float = _option(
    0.0,
    "CutMix: paste a box of a permuted "
    "partner into each image, area ~ 1 - "
    "Beta(alpha, alpha), targets mixed by area; "
    "0 = off. With --mixup_alpha too, each batch "
    "takes one of the two (50/50).",
    section="Data",
    minimum=0,
  )
  pca_lighting: float = _option(
    0.0,
    "The 2012 paper's colour augmentation: "
    "add ImageNet's RGB principal components "
    "times N(0, this) per image (the paper: "
    "0.1); 0 = off.",
    section="Data",
    minimum=0,
  )

  # --- Training
  epochs: int = _option(100, "Maximum number of epochs.", minimum=1)
  steps_per_epoch: int = _option(
    0,
    "Training steps per epoch; 0 = training examples // global batch size.",
    minimum=0,
  )
  global_batch_size: int = _option(
    128,
    "Images per step over all replicas; must divide by the replica count.",
    minimum=1,
  )
  optimizer: str = _option(
    "adam", "'adam' (the seed) or 'sgd' with momentum (the paper).", OPTIMIZERS
  )
  learning_rate: float = _option(1e-3, "Peak learning rate.")
  momentum: float = _option(0.9, "SGD momentum.")
  weight_decay: float = _option(
    0.0, "Decoupled weight decay (the paper used 5e-4 with SGD)."
  )
  lr_schedule: str = _option(
    "seed",
    "'constant'; 'seed' (constant for "
    "--lr_constant_epochs, then x exp(-0.1) per "
    "epoch); 'cosine' (linear warmup, cosine decay "
    "to 0); 'step' (x0.1 at each --lr_boundaries "
    "epoch); 'plateau' (/10 when --plateau_monitor "
    "stalls).",
    LR_SCHEDULES,
  )
  lr_constant_epochs: int = _option(
    10, "Epochs at the peak rate before the 'seed' schedule starts decaying."
  )
  warmup_epochs: float = _option(
    0.0, "Linear warmup length in epochs ('cosine', or before 'seed')."
  )
  early_stopping_patience: int = _option(
    5,
    "Stop after this many epochs "
    "without improvement of "
    "--early_stopping_monitor; 0 = never.",
    minimum=0,
  )
  early_stopping_monitor: str = _option(
    "loss",
    "Quantity early stopping watches (the seed: training loss).",
    MONITORS,
  )
  steps_per_call: int = _option(
    0,
    "Training steps run per tf.function call "
    "(fewer Python round trips; also the "
    "granularity of logging and preemption "
    "checks); 0 = 100 on TPU, else 10.",
    minimum=0,
  )
  seed: int = _option(42, "Seed for weights, input order and augmentation.")
  nan_policy: str = _option(
    "error",
    "On a NaN/Inf loss: 'error' stops naming "
    "the step; 'rollback' restores the last good "
    "checkpoint and halves the learning rate.",
    NAN_POLICIES,
  )
  max_rollbacks: int = _option(
    3, "Most NaN rollbacks before giving up.", minimum=0
  )
  best_metric: str = _option(
    "val_accuracy",
    "The metrics.jsonl field whose "
    "best epoch best/ (and the export) keeps; "
    "'loss' fields are minimised, others maximised. "
    "Without validation data, 'val_accuracy' keeps "
    "the latest epoch; other val_* need --eval_data.",
    BEST_METRICS,
  )
  lr_boundaries: str = _option(
    "30,60",
    "'step' schedule: epochs (increasing "
    "whole numbers) at each of which the rate is "
    "multiplied by 0.1.",
  )
  plateau_monitor: str = _option(
    "val_accuracy",
    "'plateau' schedule: the "
    "quantity whose stall divides the rate by 10 "
    "(the paper: validation error).",
    MONITORS,
  )
  plateau_patience: int = _option(
    2,
    "'plateau' schedule: epochs without "
    "improvement of --plateau_monitor before "
    "the rate is divided by 10.",
    minimum=1,
  )
  plateau_min_delta: float = _option(
    0.0,
    "'plateau' schedule: the smallest "
    "change of --plateau_monitor that counts "
    "as an improvement.",
    minimum=0.0,
  )
  clip_norm: float = _option(
    0.0,
    "Clip the gradient to this global L2 norm "
    "(over all weights, after the sum over "
    "replicas and workers, after float16 loss "
    "unscaling); 0 = off.",
    minimum=0.0,
  )
  ema_decay: float = _option(
    0.0,
    "Keep an exponential moving average of the "
    "trainable weights with this decay per step "
    "(e.g. 0.999); validation, best/ and the export "
    "use the averaged weights; 0 = off.",
  )
  label_smoothing: float = _option(
    0.0,
    "Label smoothing s of the training "
    "loss, in [0, 1): targets y(1-s) + s/k "
    "(binary: + s/2), as Keras' losses; "
    "validation loss stays plain "
    "cross-entropy. 0 = off.",
  )

  # --- Distribution
  strategy: str = _option(
    "auto",
    "tf.distribute strategy. 'auto' = TPU if "
    "one is reachable, else multi_worker if TF_CONFIG "
    "names several tasks, else mirrored on 2+ GPUs, "
    "else one GPU, else the CPU.",
    STRATEGIES,
    "Distribution",
  )
  cpu_devices: int = _option(
    0,
    "Split the host CPU into this many logical "
    "devices (so 'mirrored' runs without GPUs); 0 = "
    "don't.",
    section="Distribution",
    minimum=0,
  )
  devices: str = _option(
    "",
    "Comma-separated devices for 'mirrored' or "
    "'one_device' (e.g. /gpu:0,/gpu:1); empty = all.",
    section="Distribution",
  )
  tpu: str = _option(
    "",
    "TPU for --strategy=tpu: 'local' (TPU VM, Colab), a "
    "TPU name, or grpc://HOST:PORT.",
    section="Distribution",
  )
  collective_timeout_secs: int = _option(
    600,
    "multi_worker: a collective "
    "that waits longer than this means a "
    "peer is gone; the job fails instead "
    "of hanging.",
    section="Distribution",
    minimum=0,
  )
  precision: str = _option(
    "auto",
    "'auto' = bfloat16 on TPU, float16 with "
    "loss scaling on GPUs of compute capability 7.x, "
    "bfloat16 on 8.0+ and on CPUs with AVX512_BF16 or "
    "AMX, else float32.",
    PRECISIONS,
    "Distribution",
  )
  require_accelerator: str = _option(
    "none",
    "'gpu' or 'tpu': exit at once with one line (what TensorFlow "
    "sees, what it was built for, the likely cause) when TensorFlow cannot "
    "see that accelerator, instead of training on the CPU. launch.vertex "
    "and the Colab notebook set it for accelerator machines.",
    ACCELERATORS,
    "Distribution",
  )
  all_reduce_precision: str = _option(
    "auto",
    "dtype gradients cross the network in. 'auto' = bfloat16 for "
    "multi_worker runs in mixed_bfloat16 (their gradients come out of "
    "bfloat16 kernels, so the cast is nearly lossless and halves the "
    "bytes), else float32.",
    ALL_REDUCE_PRECISIONS,
    "Distribution",
  )

  # --- Outputs
  model_dir: str = _option(
    "",
    "Where checkpoints, metrics, TensorBoard logs "
    "and the exported model go (local or gs://). "
    "Empty = $AIP_MODEL_DIR if set, else runs/<config>. "
    "Re-running with the same dir resumes.",
    section="Outputs",
  )
  checkpoint_every_steps: int = _option(
    0,
    "Also checkpoint every N steps (0 = only at epoch ends).",
    section="Outputs",
    minimum=0,
  )
  checkpoint_every_secs: int = _option(
    0,
    "Also checkpoint every N seconds (0 = off).",
    section="Outputs",
    minimum=0,
  )
  keep_checkpoints: int = _option(
    3,
    "Recent checkpoints kept (the best one is kept apart).",
    section="Outputs",
    minimum=1,
  )
  profile_steps: str = _option(
    "",
    "'A,B': write a profiler trace of steps "
    "A to B to the TensorBoard logs (view in "
    "TensorBoard's Profile tab).",
    section="Outputs",
  )
  export: bool = _option(
    True,
    "Export the best model at the end (.keras and SavedModel).",
    section="Outputs",
  )
  export_precision: str = _option(
    "float32",
    "What the export computes in. 'float32' = a float32 copy of "
    "the trained weights (mixed precision keeps its weights in float32, so "
    "nothing is lost): every CPU and GPU serves it at full speed and "
    "TFLite converts it. 'training' = the run's --precision (bfloat16 is "
    "emulated, slowly, on CPUs without AVX512_BF16 and GPUs before Ampere; "
    "TFLite cannot convert it).",
    EXPORT_PRECISIONS,
    "Outputs",
  )
  hypertune_metric: str = _option(
    "",
    "Vertex AI hyperparameter tuning: the metric every epoch reports to "
    "the tuning service through cloudml-hypertune, only when this process "
    "runs as a tuning trial (Vertex sets CLOUD_ML_TRIAL_ID); launch.vertex "
    f"--tune sets it. One of {', '.join(HYPERTUNE_METRICS)} (auc: "
    "--num_classes=1); empty = report nothing.",
    section="Outputs",
  )
  log_every_steps: int = _option(
    0,
    "Write training loss, accuracy (top-5 at "
    "5+ classes) and learning rate to "
    "TensorBoard every N steps (train/batch_*, "
    "each the mean over the steps since the "
    "last point); 0 = after every call of "
    "--steps_per_call steps.",
    section="Outputs",
    minimum=0,
  )

  def to_json(self):
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  def replace(self, **changes):
    unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise UserError(f"Unknown config option(s): {sorted(unknown)}")
    return validate(dataclasses.replace(self, **changes))


def fields():
  return dataclasses.fields(Config)


def validate(config):
  """Checks values no flag parser can; returns the config or raises UserError."""
  for field in fields():
    value = getattr(config, field.name)
    choices = field.metadata["choices"]
    if choices and value not in choices:
      raise UserError(
        f"--{field.name}={value!r} is not one of: {', '.join(choices)}"
      )
  for field in fields():
    minimum = field.metadata["minimum"]
    if minimum is not None and getattr(config, field.name) < minimum:
      raise UserError(
        f"--{field.name} must be >= {minimum}, got "
        f"{getattr(config, field.name)}"
      )
  if config.learning_rate <= 0:
    raise UserError(f"--learning_rate must be > 0, got {config.learning_rate}")
  if config.profile_steps:
    parts = config.profile_steps.split(",")
    if (
      len(parts) != 2
      or not all(p.strip().isdigit() for p in parts)
      or int(parts[0]) >= int(parts[1])
    ):
      raise UserError(
        f"--profile_steps={config.profile_steps!r}: expected "
        "'A,B' with whole numbers A < B"
      )
  if not 0 <= config.batch_norm_momentum < 1:
    raise UserError(
      f"--batch_norm_momentum must be in [0, 1), got "
      f"{config.batch_norm_momentum}"
    )
  if not 0 <= config.ema_decay < 1:
    raise UserError(f"--ema_decay must be in [0, 1), got {config.ema_decay}")
  if not 0 <= config.dropout_rate < 1:
    raise UserError(
      f"--dropout_rate must be in [0, 1), got {config.dropout_rate}"
    )
  if not 0 <= config.label_smoothing < 1:
    raise UserError(
      f"--label_smoothing must be in [0, 1), got {config.label_smoothing}"
    )
  if config.randaugment_magnitude > 10:
    raise UserError(
      f"--randaugment_magnitude must be in 0..10, got "
      f"{config.randaugment_magnitude}"
    )
  if config.hypertune_metric not in ("",) + HYPERTUNE_METRICS:
    raise UserError(
      f"--hypertune_metric={config.hypertune_metric!r} is not one "
      f"of: {', '.join(HYPERTUNE_METRICS)}"
    )
  if config.hypertune_metric.endswith("auc") and config.num_classes != 1:
    raise UserError(
      f"--hypertune_metric={config.hypertune_metric}: AUC is "
      "logged for binary runs only (--num_classes=1), got "
      f"--num_classes={config.num_classes}"
    )
  lr_boundaries(config)
  if config.best_metric.endswith("auc") and config.num_classes != 1:
    raise UserError(
      f"--best_metric={config.best_metric}: AUC is logged for "
      "binary runs only (--num_classes=1), got "
      f"--num_classes={config.num_classes}"
    )
  if "top5" in config.best_metric and config.num_classes < 5:
    raise UserError(
      f"--best_metric={config.best_metric}: top-5 accuracy is "
      "logged at --num_classes >= 5, got "
      f"--num_classes={config.num_classes}"
    )
  _check_layer_names(config)
  _check_validation_needs(config)
  if config.data_service not in ("", "vertex") and not re.fullmatch(
    r"(grpc://)?[^/:\s]+:\d+", config.data_service
  ):
    raise UserError(
      f"--data_service={config.data_service!r}: expected "
      "grpc://HOST:PORT or vertex"
    )
  return config


def has_validation(config):
  """Whether the run has validation data: --eval_data, or the synthetic
  set's validation split when it trains on the synthetic set."""
  return bool(config.eval_data) or (
    not config.train_data and config.synthetic_eval_examples > 0
  )


def _check_validation_needs(config):
  """A validation metric asked for where there is no validation data."""
  if has_validation(config):
    return
  for flag in ("early_stopping_monitor", "hypertune_metric"):
    metric = getattr(config, flag)
    if metric.startswith("val_"):
      raise UserError(
        f"--{flag}={metric} needs validation data "
        "(--eval_data); without it, use a training metric"
      )
  # --best_metric's default keeps its old fallback (best = latest).
  if config.best_metric.startswith("val_") and (
    config.best_metric != "val_accuracy"
  ):
    raise UserError(
      f"--best_metric={config.best_metric} needs validation "
      "data (--eval_data); without it, use a training metric"
    )
  if config.lr_schedule == "plateau" and config.plateau_monitor.startswith(
    "val_"
  ):
    raise UserError(
      f"--plateau_monitor={config.plateau_monitor} needs "
      "validation data (--eval_data); without it, use "
      "--plateau_monitor=loss"
    )


def _check_layer_names(config):
  """The format of --freeze and --train_from (which names exist is known
  only once the model is built: trainer/warm_start.py checks that)."""
  name = r"[A-Za-z_][\w.-]*"
  if config.freeze and not re.fullmatch(rf"{name}(,{name})*", config.freeze):
    raise UsageError(
      f"--freeze={config.freeze!r}: expected comma-separated "
      "layer names, e.g. conv1,bn1"
    )
  if config.train_from and not re.fullmatch(name, config.train_from):
    raise UsageError(
      f"--train_from={config.train_from!r}: expected one layer name, e.g. conv2"
    )
  if config.freeze and config.train_from:
    raise UsageError(
      "give --freeze or --train_from, not both (got "
      f"--freeze={config.freeze} --train_from={config.train_from})"
    )


def image_size(config):
  """The input side in pixels: --image_size, else the model's own."""
  return config.image_size or MODEL_IMAGE_SIZES[config.model]


def lr_boundaries(config):
  """--lr_boundaries as a tuple of increasing epochs >= 1.

  Raises:
    UserError: not comma-separated whole numbers, or not increasing.
  """
  parts = [p.strip() for p in config.lr_boundaries.split(",") if p.strip()]
  if not all(p.isdigit() for p in parts):
    raise UserError(
      f"--lr_boundaries={config.lr_boundaries!r}: expected "
      "comma-separated whole numbers of epochs, e.g. 30,60,80"
    )
  epochs = tuple(int(p) for p in parts)
  if config.lr_schedule == "step" and not epochs:
    raise UserError("--lr_schedule=step needs --lr_boundaries, e.g. 30,60,80")
  if any(b <= a for a, b in zip(epochs, epochs[1:])) or (
    epochs and epochs[0] < 1
  ):
    raise UserError(
      f"--lr_boundaries={config.lr_boundaries!r}: epochs must "
      "be >= 1 and strictly increasing"
    )
  return epochs


# Options that decide which variables a run's checkpoints hold and in what
# order (Keras saves optimizer variables by position): resuming a model dir
# with another value would load its saved state into the wrong variables.
CHECKPOINT_LAYOUT = (
  "model",
  "num_classes",
  "optimizer",
  "freeze",
  "train_from",
)


def load_resolved(path):
  """What a run's config.json records `auto` resolved to ({} for runs that
  predate the record), e.g. {"precision": "mixed_bfloat16"}."""
  if "://" in path:
    import tensorflow as tf

    with tf.io.gfile.GFile(path) as f:
      return json.load(f).get(RESOLVED_KEY, {})
  with open(path, encoding="utf-8") as f:
    return json.load(f).get(RESOLVED_KEY, {})


def precision_conflict(recorded, resolved, given):
  """Why a run that resolved its precision to `resolved` (from --precision=
  `given`) cannot resume checkpoints written in `recorded`, or None."""
  if not recorded or recorded == resolved:
    return None
  how = (
    f"--precision=auto resolves to {resolved} on this machine"
    if given == "auto"
    else f"--precision={given}"
  )
  return (
    f"{how}, but this model dir's checkpoints were written in "
    f"{recorded}; resuming would load them into the wrong variables or "
    f"change the run's numbers: use --precision={recorded}, or a new "
    "--model_dir"
  )


def resume_conflict(saved, config):
  """Why `config` cannot resume checkpoints written under `saved` (one
  line), or None."""
  differing = [
    (f"--{name}", getattr(config, name), getattr(saved, name))
    for name in CHECKPOINT_LAYOUT
    if getattr(config, name) != getattr(saved, name)
  ]
  if image_size(config) != image_size(saved):
    differing.append(("--image_size", image_size(config), image_size(saved)))
  if bool(config.ema_decay) != bool(saved.ema_decay):  # Averages or none.
    differing.append(("--ema_decay", config.ema_decay, saved.ema_decay))
  if not differing:
    return None
  flag, given, recorded = differing[0]
  return (
    f"{flag}={given!r} differs from the {recorded!r} this model dir's "
    "checkpoints were written with; resuming would load them into the "
    f"wrong variables: use a new --model_dir, or {flag}={recorded!r}"
  )


def profile_range(config):
  """(first, last) steps to profile, or None."""
  if not config.profile_steps:
    return None
  first, last = (int(p) for p in config.profile_steps.split(","))
  return first, last


def _type_name(field):
  return getattr(field.type, "__name__", field.type)


def load(path, strict=False):
  """Reads a config.json written by a previous run (local or gs://).

  Args:
    path: the file.
    strict: refuse options this Config does not have, values of the wrong
      type and invalid values (for re-running the file, where a dropped
      option would make the re-run differ); otherwise unknown options are
      ignored.

  Raises:
    UserError: a file that is missing, not JSON or (strict) not a valid
      config; the message starts with the path.
  """
  try:
    if "://" in path:
      import tensorflow as tf  # Local: launch/ and the flag parser avoid TF.

      try:
        with tf.io.gfile.GFile(path) as f:
          values = json.load(f)
      except tf.errors.OpError as e:
        raise UserError(f"{path}: {describe(e)}") from None
    else:
      with open(path, encoding="utf-8") as f:
        values = json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{path}: not valid JSON ({e})") from None
  except OSError as e:
    raise UserError(f"{path}: {e.strerror or e}") from None
  if not isinstance(values, dict):
    raise UserError(f"{path}: not a JSON object of options")
  # Where the run put its files and what it resolved: recorded beside the
  # options, not options.
  values.pop(RUN_DIR_KEY, None)
  values.pop(RESOLVED_KEY, None)
  known = {f.name: f for f in fields()}
  if not strict:
    return Config(**{k: v for k, v in values.items() if k in known})
  unknown = sorted(set(values) - set(known))
  if unknown:
    raise UserError(
      f"{path}: options this trainer does not have: {', '.join(unknown)}"
    )
  json_types = {"str": str, "int": int, "float": (int, float), "bool": bool}
  for name, value in values.items():
    expected = json_types[_type_name(known[name])]
    # bool is an int in Python, but a JSON true is no epoch count.
    if not isinstance(value, expected) or (
      isinstance(value, bool) and expected is not bool
    ):
      raise UserError(
        f"{path}: {name}={value!r} is not a {_type_name(known[name])}"
      )
  try:
    return validate(Config(**values))
  except UserError as e:  # Keeps its kind: a usage error stays one (exit 2).
    raise type(e)(f"{path}: {e}") from None


def define_flags(flag_values, defaults):
  """Defines one absl flag per Config field, defaulting to `defaults`' values.

  Enum fields become enum flags, so a bad value is a usage error listing the
  valid ones.
  """
  from absl import flags  # Kept local: configs/ and launch/ import this module.

  class WholeNumberParser(flags.IntegerParser):
    """Integers, also written as floats: Vertex AI passes a tuning job's
    discrete values that way (--global_batch_size=128.0)."""

    def convert(self, argument):
      try:
        return super().convert(argument)
      except ValueError:
        if _whole_number(argument) is None:
          raise
        return _whole_number(argument)

  for field in fields():
    default = getattr(defaults, field.name)
    help_text = f"[{field.metadata['section']}] {field.metadata['help']}"
    choices = field.metadata["choices"]
    if choices:
      flags.DEFINE_enum(
        field.name, default, choices, help_text, flag_values=flag_values
      )
    elif field.type in (bool, "bool"):
      flags.DEFINE_bool(field.name, default, help_text, flag_values=flag_values)
    elif field.type in (int, "int"):
      flags.DEFINE(
        WholeNumberParser(),
        field.name,
        default,
        help_text,
        flag_values=flag_values,
        serializer=flags.ArgumentSerializer(),
      )
    elif field.type in (float, "float"):
      flags.DEFINE_float(
        field.name, default, help_text, flag_values=flag_values
      )
    else:
      flags.DEFINE_string(
        field.name, default, help_text, flag_values=flag_values
      )


def _whole_number(text):
  """128 for "128.0" or "1.28e2"; None unless `text` is a whole number."""
  try:
    number = float(text)
  except (TypeError, ValueError):
    return None
  return int(number) if number.is_integer() else None


def from_flags(flag_values):
  """The Config the parsed flags describe (defaults already folded in)."""
  return validate(
    Config(**{f.name: flag_values[f.name].value for f in fields()})
  )
