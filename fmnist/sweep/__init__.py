"""Run by no stage: fmnist-sweep, an Optuna study whose trials are DVC experiments."""
