"""The training loop, split along the lines Orbit draws (`trainer.train`
puts it together):

    build        builds a run: runtime, inputs, model and optimizer,
                 checkpoints (each testable alone)
    state        what must survive a restart, as checkpointed variables
    step         *how* one call of training steps runs on the replicas
    clock        *when*, within an epoch: steps per call, checkpoints due,
                 profiling
    controller   *when*, over the run: epochs, evaluation, checkpoints,
                 preemption, resuming, the crash points
    epoch_end    an epoch's record and what it decides: best, early stop,
                 plateau
    recovery     a NaN/Inf: stop, or roll back
    finish       the end of the run: status, export, summary
    checkpoints  the latest and best checkpoints, chief-aware
    progress     the epoch line and the progress bar
"""
