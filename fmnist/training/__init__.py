"""Training, run by the train stage alone: the loop, augmentation, EMA, checkpoints, DDP, the environment record."""
