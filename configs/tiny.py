"""A seconds-long smoke test: the tiny model on small synthetic images.

    python -m trainer.task --config=tiny

Reaches well above chance in 3 epochs on a laptop CPU; used by the tests and
the Colab notebook's quick check.
"""

from trainer.config import Config

CONFIG = Config(
  model="tiny",
  num_classes=1,
  image_size=32,
  batch_norm_momentum=0.9,  # Moving statistics settle within 48 steps.
  epochs=3,
  global_batch_size=32,
  learning_rate=3e-3,
  lr_schedule="constant",
  early_stopping_patience=0,
  synthetic_train_examples=512,
  synthetic_eval_examples=128,
  shuffle_buffer=512,
  shards_per_segment=1,  # Two segments: resumes land in either.
  steps_per_call=4,
)
