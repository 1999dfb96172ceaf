"""Krizhevsky et al. 2012 on ImageNet: the 'original' model and recipe.

    python -m trainer.task --config=imagenet_paper \
        --train_data='gs://BUCKET/imagenet/train-*' \
        --eval_data='gs://BUCKET/imagenet/validation-*' --label_offset=1

SGD, momentum 0.9, weight decay 5e-4, batch 128, learning rate 0.01, 90
epochs, 224 crops of 256 plus flips, and the paper's PCA colour augmentation
(--pca_lighting=0.1: ImageNet's RGB principal components times N(0, 0.1) per
image). The paper reached 40.7% top-1 error
(single model, no test-time augmentation: about 59% top-1 accuracy) and
18.2% top-5 error; top-5 accuracy is reported every epoch (1000 classes).
The paper divided the rate by 10 whenever the validation error stopped
improving, three times in about 90 epochs; this uses the 'step' schedule at
epochs 30, 60 and 80 instead of 'plateau': the same three reductions at
fixed epochs, so a run's rates are a function of the step alone, do not
depend on validation noise, and are the same when a run is repeated or
resumed (--lr_schedule=plateau follows the paper's rule literally). best/
keeps the epoch of the highest validation accuracy. The weight decay is
Keras' decoupled decay (w -= lr * 5e-4 * w per step), about 10x weaker than
the paper's L2 term under momentum 0.9 (which amplifies its gradient by
1 / (1 - 0.9)).
"""

from trainer.config import Config

CONFIG = Config(
  model="original",
  num_classes=1000,
  image_size=227,
  epochs=90,
  global_batch_size=128,
  optimizer="sgd",
  learning_rate=0.01,
  momentum=0.9,
  weight_decay=5e-4,
  lr_schedule="step",
  lr_boundaries="30,60,80",
  warmup_epochs=1,
  early_stopping_patience=0,
  augment="crop_flip",
  shuffle_buffer=16384,
  best_metric="val_accuracy",
  pca_lighting=0.1,
)
