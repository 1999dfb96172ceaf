"""The study of a Vertex AI HyperparameterTuningJob, from launch.vertex's flags.

    --param=NAME:double:MIN:MAX[:SCALE]       a float trainer flag
    --param=NAME:integer:MIN:MAX[:SCALE]      an integer (or float) flag
    --param=NAME:discrete:V1,V2,...[:SCALE]   numbers to pick from
    --param=NAME:categorical:V1,V2,...        values of a choice (or any) flag

SCALE is linear (the default), log or reverse_log. Vertex AI runs each trial
with `--NAME=VALUE` appended to the trainer flags (the trainer keeps the last
value of a flag, so the trial's wins over one given after `--`) and discrete
values written as floats (`--global_batch_size=128.0`). Every NAME must be a
trainer flag, and every value a trial can get (bounds, discrete and
categorical values, as Vertex writes them) is parsed with the trainer's own
flags here, so a spec the trainer would reject fails in one line before
anything is uploaded.

Never imports TensorFlow; google-cloud-aiplatform only for `sdk_parameters`.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import difflib
from typing import Any

from launch import trainer_flags
from trainer import config as config_lib
from trainer.errors import UserError

KINDS = ("double", "integer", "discrete", "categorical")
SCALES = {
  "linear": "UNIT_LINEAR_SCALE",
  "log": "UNIT_LOG_SCALE",
  "reverse_log": "UNIT_REVERSE_LOG_SCALE",
}
GOALS = ("maximize", "minimize")
# launch.vertex's --search_algorithm -> the study's algorithm (the SDK's name).
SEARCH_ALGORITHMS = {"bayesian": None, "grid": "grid", "random": "random"}
GRID_KINDS = ("integer", "discrete", "categorical")
# Trainer flags a trial must not change, and why.
NOT_TUNABLE = {
  "model_dir": "each trial writes to its own AIP_MODEL_DIR under "
  "--base_output_dir (<dir>/<trial id>/model)",
  "hypertune_metric": "it is set by --metric",
}


class TuningError(Exception):
  """A tuning flag Vertex or the trainer would reject; one line."""


@dataclasses.dataclass(frozen=True)
class Parameter:
  """One --param.

  Attributes:
    name: the trainer flag a trial sets.
    kind: one of KINDS.
    values: (min, max) for double and integer, else the values to pick from.
    scale: a key of SCALES, or "" for categorical.
    text: the --param value as given, for messages.
  """

  name: str
  kind: str
  values: tuple
  scale: str
  text: str

  def trial_values(self):
    """Every value a trial can get that matters, as Vertex writes it."""
    if self.kind in ("double", "discrete"):
      return [repr(float(v)) for v in self.values]
    return [str(v) for v in self.values]


def _number(text, spec, whole=False):
  try:
    value = float(text)
  except ValueError:
    raise TuningError(f"--param={spec}: {text!r} is not a number") from None
  if whole:
    if not value.is_integer():
      raise TuningError(f"--param={spec}: {text!r} is not a whole number")
    return int(value)
  return value


def parse_parameter(spec):
  """Reads one --param=NAME:TYPE:VALUES[:SCALE] (syntax, numbers, order).

  Raises:
    TuningError: one line naming the --param and what is wrong.
  """
  parts = spec.split(":", 2)
  if len(parts) < 3 or not parts[0]:
    raise TuningError(
      f"--param={spec}: expected NAME:TYPE:VALUES[:SCALE] with "
      f"TYPE one of {', '.join(KINDS)}"
    )
  name, kind, rest = parts
  if kind not in KINDS:
    raise TuningError(
      f"--param={spec}: TYPE {kind!r} is not double, integer, "
      "discrete or categorical"
    )
  if kind == "categorical":  # No scale: any ':' belongs to the values.
    values = tuple(rest.split(","))
    scale = ""
  else:
    fields = rest.split(":")
    count = 2 if kind in ("double", "integer") else 1
    usage = ("MIN:MAX" if count == 2 else "V1,V2,...") + "[:SCALE]"
    if len(fields) not in (count, count + 1):
      raise TuningError(f"--param={spec}: expected NAME:{kind}:{usage}")
    scale = fields[count] if len(fields) > count else "linear"
    if scale not in SCALES:
      raise TuningError(
        f"--param={spec}: scale {scale!r} is not linear, log or reverse_log"
      )
    texts = fields[:count] if count == 2 else fields[0].split(",")
    values = tuple(_number(t, spec, whole=kind == "integer") for t in texts)
  if kind in ("double", "integer"):
    low, high = values
    if not low < high:
      raise TuningError(f"--param={spec}: MIN {low:g} must be < MAX {high:g}")
  else:
    if len(values) < 2:
      raise TuningError(f"--param={spec}: {kind} needs at least 2 values")
    repeated = [v for v in values if values.count(v) > 1]
    if repeated:
      shown = f"{repeated[0]:g}" if kind == "discrete" else repeated[0]
      raise TuningError(f"--param={spec}: {shown} is repeated")
    if kind == "discrete":
      values = tuple(sorted(values))  # Vertex wants them increasing.
  if scale in ("log", "reverse_log") and min(values) <= 0:
    raise TuningError(
      f"--param={spec}: the {scale} scale needs values > 0, got {min(values):g}"
    )
  return Parameter(name, kind, values, scale, spec)


def _check_flag(parameter, trial_args):
  """The trainer flag exists, takes this kind, and takes every trial value."""
  name, spec = parameter.name, parameter.text
  fields = {f.name: f for f in config_lib.fields()}
  if name in NOT_TUNABLE:
    raise TuningError(
      f"--param={spec}: {name} cannot be tuned: {NOT_TUNABLE[name]}"
    )
  if name not in fields:
    close = difflib.get_close_matches(name, fields, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise TuningError(f"--param={spec}: {name} is not a trainer flag{hint}")
  field = fields[name]
  integer = field.type in (int, "int")
  numeric = (integer or field.type in (float, "float")) and not field.metadata[
    "choices"
  ]
  if parameter.kind != "categorical" and not numeric:
    raise TuningError(f"--param={spec}: --{name} takes categorical values")
  fractional = parameter.kind == "double" or (
    parameter.kind == "discrete"
    and not all(float(v).is_integer() for v in parameter.values)
  )
  if integer and fractional:
    raise TuningError(
      f"--param={spec}: --{name} takes whole numbers: use "
      "integer, or discrete with whole values"
    )
  for value in parameter.trial_values():
    try:
      trainer_flags.parse([*trial_args, f"--{name}={value}"])
    except UserError as e:
      reason = str(e).removeprefix("trainer flags: ")
      raise TuningError(
        f"--param={spec}: a trial with --{name}={value} would stop: {reason}"
      ) from None


def trial_trainer_args(options, trainer_args):
  """The trainer flags of every trial: the job's, plus the metric to report."""
  return [*trainer_args, f"--hypertune_metric={options['metric']}"]


def goal(options):
  """MAXIMIZE or MINIMIZE: --goal, or the metric's own direction."""
  if options["goal"]:
    return options["goal"].upper()
  return "MINIMIZE" if options["metric"].endswith("loss") else "MAXIMIZE"


def validate(options, trainer_args, trainer):
  """Checks the tuning flags against each other and the trainer's flags.

  Args:
    options: launch.vertex's flag values; `tuning_flags_given` names the
      tuning flags set on its command line.
    trainer_args: the flags after `--`.
    trainer: the same flags parsed (`trainer_flags.TrainerFlags`).

  Returns:
    The `Parameter`s, in the order given; [] without --tune.

  Raises:
    TuningError: one line naming the flag and the value that is wrong.
  """
  if not options["tune"]:
    if options["tuning_flags_given"]:
      raise TuningError(f"--{options['tuning_flags_given'][0]} needs --tune")
    return []
  metrics = config_lib.HYPERTUNE_METRICS
  metric = options["metric"]
  if not metric:
    raise TuningError(f"--tune needs --metric: one of {', '.join(metrics)}")
  if metric not in metrics:
    raise TuningError(f"--metric={metric} is not one of {', '.join(metrics)}")
  if not options["param"]:
    raise TuningError("--tune needs at least one --param=NAME:TYPE:VALUES")
  if options["goal"] and options["goal"] not in GOALS:
    raise TuningError(f"--goal={options['goal']} is not maximize or minimize")
  if options["goal"] == "maximize" and metric.endswith("loss"):
    raise TuningError(
      f"--goal=maximize with --metric={metric}: {metric} is a "
      "loss, which tuning minimizes"
    )
  if options["goal"] == "minimize" and not metric.endswith("loss"):
    raise TuningError(
      f"--goal=minimize with --metric={metric}: tuning maximizes {metric}"
    )
  for name in ("max_trials", "parallel_trials"):
    if options[name] < 1:
      raise TuningError(f"--{name} must be >= 1, got {options[name]}")
  if options["parallel_trials"] > options["max_trials"]:
    raise TuningError(
      f"--parallel_trials={options['parallel_trials']} must be "
      f"<= --max_trials={options['max_trials']}"
    )
  if options["max_failed_trials"] < 0:
    raise TuningError(
      f"--max_failed_trials must be >= 0, got {options['max_failed_trials']}"
    )
  if options["search_algorithm"] not in SEARCH_ALGORITHMS:
    raise TuningError(
      f"--search_algorithm={options['search_algorithm']} is "
      f"not one of {', '.join(SEARCH_ALGORITHMS)}"
    )

  config = trainer.config
  for name, reason in NOT_TUNABLE.items():
    if name in trainer.given:
      raise TuningError(f"trainer flag --{name} with --tune: {reason}; drop it")
  if metric.endswith("auc") and config.num_classes != 1:
    raise TuningError(
      f"--metric={metric}: AUC is logged for binary runs only "
      f"(trainer flag --num_classes=1), got --num_classes="
      f"{config.num_classes}"
    )
  # As trainer.data: no --train_data means the synthetic set, whose
  # validation split exists unless --synthetic_eval_examples=0.
  has_validation = config.eval_data or (
    not config.train_data and config.synthetic_eval_examples
  )
  if metric.startswith("val_") and not has_validation:
    raise TuningError(
      f"--metric={metric} needs validation data: add the "
      "trainer flag --eval_data"
    )

  trial_args = trial_trainer_args(options, trainer_args)
  parameters = []
  for spec in options["param"]:
    parameter = parse_parameter(spec)
    if parameter.name in [p.name for p in parameters]:
      raise TuningError(f"--param={parameter.name} is given twice")
    _check_flag(parameter, trial_args)
    parameters.append(parameter)
  if options["search_algorithm"] == "grid":
    for parameter in parameters:
      if parameter.kind not in GRID_KINDS:
        raise TuningError(
          f"--search_algorithm=grid: grid search needs "
          f"integer, discrete or categorical parameters; "
          f"--param={parameter.text} is {parameter.kind}"
        )
  return parameters


def _json_number(value):
  return int(value) if float(value).is_integer() else value


def study_spec(options, parameters):
  """The StudySpec as Vertex AI's REST API receives it (camelCase JSON)."""
  specs = []
  for parameter in parameters:
    spec = {"parameterId": parameter.name}
    if parameter.kind == "double":
      low, high = parameter.values
      spec["doubleValueSpec"] = {"minValue": low, "maxValue": high}
    elif parameter.kind == "integer":
      low, high = parameter.values  # int64: strings in JSON.
      spec["integerValueSpec"] = {"minValue": str(low), "maxValue": str(high)}
    elif parameter.kind == "discrete":
      spec["discreteValueSpec"] = {
        "values": [_json_number(v) for v in parameter.values]
      }
    else:
      spec["categoricalValueSpec"] = {"values": list(parameter.values)}
    if parameter.scale:
      spec["scaleType"] = SCALES[parameter.scale]
    specs.append(spec)
  study = {
    "metrics": [{"metricId": options["metric"], "goal": goal(options)}],
    "parameters": specs,
  }
  algorithm = SEARCH_ALGORITHMS[options["search_algorithm"]]
  if algorithm:
    study["algorithm"] = f"{algorithm.upper()}_SEARCH"
  # The best epoch counts, as the trainer's best/ checkpoint: a trial that
  # overfits late keeps the result it reached.
  study["measurementSelectionType"] = "BEST_MEASUREMENT"
  return study


def job_request(
  options: dict[str, Any],
  parameters: Sequence[Parameter],
  trial_job_request: dict[str, Any],
) -> dict[str, Any]:
  """The HyperparameterTuningJob as Vertex AI's REST API receives it.

  Args:
    options: launch.vertex's flag values.
    parameters: the validated `Parameter`s.
    trial_job_request: the CustomJob request every trial runs
      (launch.vertex_requests' `job_request` with the trial's trainer flags).
  """
  request = {
    "displayName": trial_job_request["displayName"],
    "studySpec": study_spec(options, parameters),
    "maxTrialCount": options["max_trials"],
    "parallelTrialCount": options["parallel_trials"],
  }
  if options["max_failed_trials"]:
    request["maxFailedTrialCount"] = options["max_failed_trials"]
  request["trialJobSpec"] = trial_job_request["jobSpec"]
  if "labels" in trial_job_request:
    request["labels"] = trial_job_request["labels"]
  return request


def sdk_parameters(parameters):
  """The `parameter_spec` of aiplatform.HyperparameterTuningJob."""
  from google.cloud.aiplatform import hyperparameter_tuning as hpt

  specs = {}
  for parameter in parameters:
    if parameter.kind == "double":
      low, high = parameter.values
      spec = hpt.DoubleParameterSpec(min=low, max=high, scale=parameter.scale)
    elif parameter.kind == "integer":
      low, high = parameter.values
      spec = hpt.IntegerParameterSpec(min=low, max=high, scale=parameter.scale)
    elif parameter.kind == "discrete":
      spec = hpt.DiscreteParameterSpec(
        values=list(parameter.values), scale=parameter.scale
      )
    else:
      spec = hpt.CategoricalParameterSpec(values=list(parameter.values))
    specs[parameter.name] = spec
  return specs
