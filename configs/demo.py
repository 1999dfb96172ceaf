"""The default: the seed AlexNet on the built-in synthetic two-class set.

    python -m trainer.task

Nothing is downloaded: 128 training and 128 held-out validation images
(horizontal vs vertical stripes, the validation split drawn from another
seed) are drawn once and written as TFRecords. Reaches >= 90% validation
accuracy by epoch 2 or 3 of 4 (measured: 59%, 93%, 100%, 100%). The whole
command, drawing the data included, takes under 2 minutes on a 2-core AMD
EPYC with AVX2 in float32 (1:54 measured while other jobs kept the load
average near 5), and well under a minute with AVX512_BF16 (estimated).

Small on purpose: 8 steps of 16 images per epoch, 32 updates in all, keep a
float32 CPU under 3 minutes; 16 rather than 32 images per step doubles the
updates for the same compute, and the set converges within 16-24 of them.

Adam at 1e-4 rather than the seed's 1e-3: with 256 steps of 32, 1e-3 left
the 21.6M-parameter network stuck at chance (loss 0.693 for 4 epochs).
"""

from trainer.config import Config

CONFIG = Config(
    model="seed",
    num_classes=1,
    epochs=4,
    global_batch_size=16,
    synthetic_train_examples=128,
    synthetic_eval_examples=128,
    optimizer="adam",
    learning_rate=1e-4,
    # Decaying to zero keeps the last epochs from the late loss spikes a
    # constant rate showed (one epoch at 50% after 99%).
    lr_schedule="cosine",
    early_stopping_patience=0,
    steps_per_call=4,
    # At Keras' 0.99, BatchNorm's moving statistics would still weigh their
    # initial values by 0.99**32 = 0.72 at the end; at 0.9 that is 0.43 after
    # epoch 1 (its low validation accuracy) and 0.03 after epoch 4.
    batch_norm_momentum=0.9,
)
