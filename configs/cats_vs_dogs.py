"""The seed notebook's experiment: the seed AlexNet on Cats vs Dogs.

    python -m trainer.prepare --source=tfds:cats_vs_dogs --out=data/cats_vs_dogs
    python -m trainer.task --config=cats_vs_dogs \
        --train_data='data/cats_vs_dogs/train-*' \
        --eval_data='data/cats_vs_dogs/validation-*'

Same model, loss, optimizer (Adam 1e-3), schedule (constant 10 epochs, then
x exp(-0.1) per epoch), early stopping (patience 5 on training loss), 100
epochs and 80/20 split as the seed. Differs where speed needs it: global
batch 128 instead of 4, mixed precision where the hardware has it, uint8
input with random-resized-crop augmentation. The seed reports ~80-85%
validation accuracy.
"""

from trainer.config import Config

CONFIG = Config(
  model="seed",
  num_classes=1,
  epochs=100,
  global_batch_size=128,
  optimizer="adam",
  learning_rate=1e-3,
  lr_schedule="seed",
  lr_constant_epochs=10,
  early_stopping_patience=5,
  early_stopping_monitor="loss",
  augment="random_resized_crop",
)
