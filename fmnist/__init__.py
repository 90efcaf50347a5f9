"""The Fashion-MNIST pipeline's package: one module per concept (docs/architecture.md maps them).

The stage scripts in `stages/`, `scripts/compare.py`, `bench/bench.py` and the
`fmnist-predict` command import from here; each stage imports only the modules its
work needs, and dvc.yaml lists them as the stage's deps.
"""
