"""Probes of Vertex AI hyperparameter tuning trials (trainer.hypertune). Not
named hypertune: that is cloudml-hypertune's module, which trainer.hypertune
imports."""

from prelude import emit
from prelude import tiny

from trainer import train as train_lib


def multi_worker_trial():
  """One worker of a 2-worker trial reporting val_loss (both run with the
  trial's id; only the chief reports, the cluster's record)."""
  summary = train_lib.train(
    tiny(
      strategy="multi_worker",
      epochs=2,
      steps_per_epoch=4,
      hypertune_metric="val_loss",
    )
  )
  emit(status=summary["status"])
