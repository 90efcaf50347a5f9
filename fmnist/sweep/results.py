"""The result of a sweep: its best trials as a table, and Optuna's pictures of the study.

    lines = summary(study, params=["train.lr", ...], top=10)     # what fmnist-sweep prints at the end
    pictures(study, Path("reports/sweep/sweep"))                  # optimization_history.png, param_importances.png

Trials are ranked by the objective, validation accuracy (best_val_acc), best first; test
accuracy is shown beside it, as a report, never as what was optimised.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from fmnist.core.errors import flat
from fmnist.sweep.study import DEFAULTS, EXPERIMENT, FAILURE, INTERRUPTED, LOG, RERUN_OF, interrupted

PICTURES = ("optimization_history.png", "param_importances.png")


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def val_acc(t: FrozenTrial) -> float | None:
    """The trial's best validation accuracy: its value, or for a pruned trial (whose value
    is its last epoch's) what its summary says."""
    found = t.user_attrs.get("best_val_acc", t.value)
    return float(found) if isinstance(found, (int, float)) else None


def ranked(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Finished trials with a score (complete, then pruned), best validation accuracy first."""
    scored = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and val_acc(t) is not None]
    return sorted(scored, key=lambda t: (t.state != TrialState.COMPLETE, -val_acc(t), t.number))


def best(trials: list[FrozenTrial]) -> FrozenTrial | None:
    done = [t for t in ranked(trials) if t.state == TrialState.COMPLETE]
    return done[0] if done else None


def table(trials: list[FrozenTrial], params: list[str], markdown: bool = False) -> list[str]:
    """One row per trial: rank, trial, experiment, state, val_acc, test_acc, epochs, params."""
    head = ["rank", "trial", "experiment", "state", "val_acc", "test_acc", "epochs", *params]
    rows = []
    for rank, t in enumerate(trials, 1):
        state = "complete" if t.state == TrialState.COMPLETE else "pruned"
        if t.user_attrs.get(DEFAULTS):
            state += " (defaults)"
        test = t.user_attrs.get("test_acc")
        rows.append([str(rank), str(t.number), str(t.user_attrs.get(EXPERIMENT, "-")), state, f"{val_acc(t):.4f}",
                     f"{test:.4f}" if isinstance(test, float) else "-", str(t.user_attrs.get("epochs", "-")),
                     *[_value(t.params[p]) if p in t.params else "-" for p in params]])
    if markdown:
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]


def counts(trials: list[FrozenTrial]) -> str:
    states = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "running": TrialState.RUNNING,
              "waiting": TrialState.WAITING}
    parts = [f"{sum(t.state == s for t in trials)} {name}" for name, s in states.items()]
    parts.append(f"{sum(t.state == TrialState.FAIL and not interrupted(t) for t in trials)} failed")
    reruns = sum(interrupted(t) for t in trials)
    if reruns:
        parts.append(f"{reruns} interrupted (re-run as new trials)")
    return ", ".join(p for p in parts if not p.startswith("0 ") or p.endswith(("complete", "failed")))


def summary(trials: list[FrozenTrial], params: list[str], top: int = 10, markdown: bool = False) -> list[str]:
    """The lines that end a sweep: counts, the table of the best trials, the best one and
    how to apply it, the defaults' score, and each failed trial's reason and log."""
    lines = [f"trials: {counts(trials)}"]
    shown = ranked(trials)[:top]
    if shown:
        lines += ["", *table(shown, params, markdown), ""]
    winner = best(trials)
    if winner is None:
        lines.append("no trial has completed yet")
    else:
        name = winner.user_attrs.get(EXPERIMENT)
        test = winner.user_attrs.get("test_acc")
        lines.append(f"best: trial {winner.number}, experiment {name}: validation accuracy {winner.value:.4f} "
                     f"(the objective); its test accuracy {test:.4f} is reported, not optimised"
                     if isinstance(test, float) else
                     f"best: trial {winner.number}, experiment {name}: validation accuracy {winner.value:.4f}")
        lines.append(f"apply it: dvc exp apply {name}")
        defaults = [t for t in trials if t.user_attrs.get(DEFAULTS) and t.state == TrialState.COMPLETE]
        if defaults and defaults[0].number != winner.number:
            d = defaults[0]
            lines.append(f"the defaults (trial {d.number}, {d.user_attrs.get(EXPERIMENT)}) scored "
                         f"{d.value:.4f}: the best is {winner.value - d.value:+.4f} on validation accuracy")
        elif defaults:
            lines.append("the best trial is the defaults' (params.yaml's own values): the search found nothing better")
    for t in trials:
        if t.state == TrialState.FAIL and not interrupted(t):
            lines.append(f"failed: trial {t.number} ({t.user_attrs.get(EXPERIMENT, '-')}): {t.user_attrs[FAILURE]} "
                         f"(log: {t.user_attrs.get(LOG, '-')})")
    for t in trials:
        if interrupted(t):
            rerun = next((r.number for r in trials if r.user_attrs.get(RERUN_OF) == t.number), None)
            lines.append(f"interrupted: trial {t.number} ({t.user_attrs.get(INTERRUPTED, 'its worker went silent')}); "
                         + (f"re-run as trial {rerun}" if rerun is not None else "to be re-run"))
    return lines


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def pictures(study: optuna.Study, folder: Path) -> tuple[list[Path], list[str]]:
    """Optuna's optimisation history and parameter importances as PNGs in `folder`; the
    paths written, and why any picture was left out (too few trials, say)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    from fmnist.core.io import write_bytes

    written, skipped = [], []
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    makers = {"optimization_history.png": (lambda: plots.plot_optimization_history(study, target_name="val_acc"), 1),
              "param_importances.png": (lambda: plots.plot_param_importances(study, target_name="val_acc"), 2)}
    for name, (make, needed) in makers.items():
        if len(complete) < needed:
            skipped.append(f"{name}: needs {needed} complete trial(s)")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                ax = make()
        except (ValueError, RuntimeError) as exc:  # e.g. importances of params that never varied
            skipped.append(f"{name}: {flat(exc, 160)}")
            continue
        if name == "optimization_history.png":
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers, not 0.25 steps
        fig = ax.figure
        fig.set_size_inches(8, 4.5)
        write_bytes(folder / name, _png(fig))
        plt.close(fig)
        written.append(folder / name)
    return written, skipped
