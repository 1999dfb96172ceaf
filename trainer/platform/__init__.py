"""What this process runs on, found before the strategy is built.

    devices   the machine's devices and accelerators: logical CPU devices,
              what TensorFlow was built for, why a GPU or TPU is missing
              (--require_accelerator, trainer.doctor)
    cluster   the multi-worker cluster from TF_CONFIG or Vertex AI's
              CLUSTER_SPEC: tasks, the chief, the tf.data service pool

trainer.strategy builds the tf.distribute strategy and picks the precision
from these.
"""
