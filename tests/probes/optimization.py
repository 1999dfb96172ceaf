"""Probes of trainer.optimization on two mirrored CPU devices."""

import tensorflow as tf

from trainer import optimization


def all_reduce(dtype):
  """Prints the variable after one SGD step (learning rate 1) of two
  replicas whose gradients are summed in `dtype`."""
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
  )
  strategy = tf.distribute.MirroredStrategy(
    ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
  )
  with strategy.scope():
    variable = tf.Variable(0.0)
    optimizer = optimization.SGD(1.0)
    if dtype != "float32":
      optimizer.all_reduce_dtype = tf.as_dtype(dtype)
    optimizer.build([variable])

  @tf.function
  def step():
    def replica_step():
      # Each replica's gradient is 1 + 2**-10: float32 holds it, bfloat16
      # (7 fraction bits) rounds it to 1.
      with tf.GradientTape() as tape:
        loss = variable * (1.0 + 2.0**-10)
      optimizer.apply_gradients([(tape.gradient(loss, variable), variable)])

    strategy.run(replica_step)

  step()
  print(repr(float(variable.numpy())))
