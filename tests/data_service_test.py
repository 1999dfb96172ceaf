"""tf.data service on loopback: a dispatcher and two workers in their own
processes do the decoding; training reaches the same accuracy as without."""

from conftest import read_jsonl


def test_training_through_data_service_matches_local_input(run_cli, tmp_path):
  common = ["--config=tiny", "--epochs=3"]
  local = run_cli("trainer.task", *common, f"--model_dir={tmp_path / 'local'}",
                  check=True)
  served = run_cli("launch.local", "--workers=1", "--data_service_workers=2",
                   "--grace_secs=5", "--", *common,
                   f"--model_dir={tmp_path / 'served'}", timeout=600)
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
