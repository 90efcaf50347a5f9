"""Shared code of the Fashion-MNIST pipeline: data, model, training, metrics, params.

The stage scripts in `stages/`, `scripts/compare.py`, `bench/bench.py` and the
command-line tools call these functions. Only `fmnist.files` reads or writes files;
everything else takes and returns plain values, arrays and tensors.
"""
