"""fmnist.sweep.results: the result table, best first, and the pictures of a study."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from fmnist.sweep.results import pictures, summary
from fmnist.sweep.study import DEFAULTS, FAILURE, LOG
from helpers.sweeps import optuna_trial as trial


def test_the_summary_ranks_by_validation_accuracy_and_points_at_failures():
    trials = [trial(0, value=0.80, **{DEFAULTS: True, "test_acc": 0.79, "epochs": 2}),
              trial(1, value=0.85, test_acc=0.84, epochs=2),
              trial(2, TrialState.PRUNED, value=0.5, best_val_acc=0.55, epochs=1),
              trial(3, TrialState.FAIL,
                    **{FAILURE: "error: train.device: cuda was asked for", LOG: "h:logs/sweep-3.log"}),
              trial(4, TrialState.FAIL, interrupted="the sweep was stopped")]
    lines = summary(trials, ["train.lr"])
    assert lines[0] == "trials: 2 complete, 1 pruned, 1 failed, 1 interrupted (re-run as new trials)"
    rows = [line.split() for line in lines if line[:1].isdigit()]
    assert [r[2] for r in rows] == ["sweep-1", "sweep-0", "sweep-2"]  # best first; pruned after the complete ones
    assert rows[0][4:6] == ["0.8500", "0.8400"] and rows[2][3:5] == ["pruned", "0.5500"]
    assert "best: trial 1, experiment sweep-1: validation accuracy 0.8500" in "\n".join(lines)
    assert "apply it: dvc exp apply sweep-1" in lines
    assert any(line.startswith("the defaults (trial 0, sweep-0) scored 0.8000: the best is +0.0500") for line in lines)
    assert "failed: trial 3 (sweep-3): error: train.device: cuda was asked for (log: h:logs/sweep-3.log)" in lines
    assert any(line.startswith("interrupted: trial 4 (the sweep was stopped); to be re-run") for line in lines)


def test_pictures_of_a_study(tmp_path):
    study = optuna.create_study(direction="maximize")
    for i, value in enumerate([0.7, 0.8, 0.75, 0.9]):
        study.add_trial(create_trial(value=value, params={"train.lr": 0.1 * (i + 1), "train.augment.shift": i % 2},
                                     distributions={"train.lr": FloatDistribution(0.01, 1),
                                                    "train.augment.shift": IntDistribution(0, 2)}))
    written, skipped = pictures(study, tmp_path)
    assert skipped == [] and [p.name for p in written] == ["optimization_history.png", "param_importances.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    written, skipped = pictures(optuna.create_study(direction="maximize"), tmp_path / "none")
    assert written == [] and len(skipped) == 2 and "needs 1 complete trial" in skipped[0]
