"""Every command that starts TensorFlow says a bad input in one line, on
every CPU kind.

CPUs with AVX512_VNNI, AVX512_BF16 or AMX turn oneDNN's custom operations on
by default, and TensorFlow then announces them at start-up; others do not.
TF_ENABLE_ONEDNN_OPTS sets them either way, so each command runs both ways
here, whatever this CPU is."""

import pytest

# (module, arguments, exit code, a fragment of the one line). "{tmp}" is a
# fresh empty directory. Each error is raised after TensorFlow has started.
COMMANDS = [
  (
    "trainer.task",
    [
      "--config=tiny",
      "--num_classes=2",
      "--freeze=conv1,conv9",
      "--model_dir={tmp}/run",
    ],
    2,
    "--freeze: no layer conv9",
  ),
  ("trainer.evaluate", ["--model_dir={tmp}/nothing"], 1, "{tmp}/nothing"),
  ("trainer.export", ["--model_dir={tmp}"], 1, "no SavedModel"),
  ("trainer.predict", ["{tmp}/nothing", "{tmp}/image.jpg"], 1, "{tmp}/nothing"),
  (
    "trainer.prepare",
    ["--source=folder:{tmp}/nothing", "--out={tmp}/out"],
    1,
    "{tmp}/nothing",
  ),
  ("trainer.doctor", ["--expect=gpu", "--nobenchmark"], 1, "--expect=gpu"),
]


@pytest.mark.multiprocess
@pytest.mark.parametrize("onednn", ["0", "1"])
@pytest.mark.parametrize(
  "module,args,code,fragment", COMMANDS, ids=[c[0] for c in COMMANDS]
)
def test_error_is_one_line(
  run_cli, tmp_path, module, args, code, fragment, onednn
):
  args = [a.format(tmp=tmp_path) for a in args]
  result = run_cli(
    module,
    *args,
    timeout=300,
    env={
      "TF_ENABLE_ONEDNN_OPTS": onednn,
      # The commands' own log level, as a user runs them.
      "TF_CPP_MIN_LOG_LEVEL": None,
    },
  )
  assert result.returncode == code, result.stdout[-2000:] + result.stderr
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
  assert fragment.format(tmp=tmp_path) in lines[0], lines[0]
