"""Sweeps: made-up Optuna trials."""

from __future__ import annotations


def optuna_trial(number: int, state=None, value=None, **attrs):
    """A finished trial of a sweep over train.lr, as the study records it (unit/test_study.py, test_sweep_report.py)."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from fmnist.sweep.study import EXPERIMENT

    state = TrialState.COMPLETE if state is None else state
    t = create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                     params={"train.lr": 0.1 + number / 100}, distributions={"train.lr": FloatDistribution(0.01, 1)},
                     user_attrs={EXPERIMENT: f"sweep-{number}", **attrs},
                     intermediate_values={1: value} if value is not None else None)
    t.number = number
    return t
