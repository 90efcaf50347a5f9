"""Run by no stage: fmnist-predict, pictures in, git/DVC look-ups, the comparison report of make compare."""
