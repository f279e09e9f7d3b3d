"""Training: the objective, the trainable/frozen split, the pure train step, Orbax checkpoints and the
host loop behind ``train.py``. See docs/TRAINING.md."""
