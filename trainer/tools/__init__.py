"""The commands besides training (`python -m trainer.task`): each module is
one `python -m trainer.tools.NAME` command, also run as `python -m
trainer.NAME` (the names users type; `trainer/NAME.py` is an alias).

    prepare          images -> sharded TFRecords (local or gs://)
    evaluate         a trained run's metrics, confusion matrix, ROC
    predict          classify image files with an export
    export           .tflite files, checked against the SavedModel
    benchmark        this machine's numbers
    doctor           what TensorFlow sees here, and why
    flags_reference  the flags page of the docs
"""
