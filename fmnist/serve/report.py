"""The comparison report of `make compare`: tables, verdict, markdown and pictures, from data.

    table = metrics_table(eval_diff)              # DataFrame: metric, base, head, delta
    ok, line = verdict(base_acc, head_acc, 0.005)
    chart = curves_mermaid({"base": base_curves, "head": head_curves}, "loss", "Loss", "cross-entropy")
    fig = curves_figure({"base": base_curves, "head": head_curves})
    text = render_markdown(...)

The markdown is also the pull request's comment, so its pictures are drawn in it, as
Mermaid charts (GitHub renders them in comments and markdown files, no hosting needed):
the training curves as `xychart-beta` line charts, the confusion matrices' change as a
table of the cells that moved. The PNGs (curves_figure, confusion_figure) show the same
in full, beside the report and in the workflow's artifact.

Everything takes plain dicts and DataFrames and returns DataFrames, strings or figures;
`scripts/compare.py` reads git and DVC and writes the files.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

# Figures are built with matplotlib's object API, not pyplot: no backend to choose, no
# screen needed, nothing global changed for a notebook that imports this module.
from matplotlib.figure import Figure

from fmnist.core.dataset import CLASSES

# The headline metrics of metrics/eval.json, in the order the report lists them.
METRICS = {"test_acc": "test accuracy", "test_loss": "test loss"}
# DVCLive's curves: metrics/train/plots/metrics/<split>/<name>.tsv, a column named <name>. Both
# losses are plain cross-entropy (train/loss_smoothed.tsv, the optimised loss, is not drawn).
CURVES = ("train/loss", "val/loss", "train/acc", "val/acc")
SIDES = {"base": "tab:blue", "head": "tab:orange"}
# Mermaid's xychart draws no legend and colours its lines in the order they come, from
# the palette of the chart's init directive. The order is fixed here, the caption names
# it: base blue and head orange as in curves.png, validation dark, training light.
CHART_LINES = (("base", "val", "#1f77b4"), ("head", "val", "#ff7f0e"),
               ("base", "train", "#aec7e8"), ("head", "train", "#ffbb78"))
CHART_CAPTION = ("Lines: **base blue, head orange**; dark: validation, light: training. "
                 "(Mermaid charts have no legend.)")
# The confusion cells listed in the report, largest change first; curves.png and
# confusion.png show everything.
CONFUSION_ROWS = 12
# Accuracies are fractions of the test set; a drop equal to the limit must not fail
# because 0.8607 - 0.8557 comes out as 0.0050000000000000044 in floating point.
_TOLERANCE = 1e-9


def _row(key: str, name: str, diff: dict) -> dict:
    old, new = diff.get("old"), diff.get("new")
    delta = new - old if old is not None and new is not None else None
    return {"key": key, "name": name, "base": old, "head": new, "delta": delta}


def metrics_table(eval_diff: dict[str, dict]) -> pd.DataFrame:
    """The headline rows of `dvc metrics diff --all` for metrics/eval.json (flat keys -> old/new)."""
    return pd.DataFrame([_row(key, name, eval_diff.get(key, {})) for key, name in METRICS.items()])


def per_class_f1_table(base: pd.DataFrame, head: pd.DataFrame) -> pd.DataFrame:
    """Per-class F1 of both sides (metrics/per_class.csv tables), in the classes' label order."""
    f1 = {side: table.set_index("class")["f1"] for side, table in (("base", base), ("head", head))}
    return pd.DataFrame([_row(name, name, {"old": _float(f1["base"].get(name)), "new": _float(f1["head"].get(name))})
                         for name in CLASSES])


def _float(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def verdict(base_accuracy: float, head_accuracy: float, max_drop: float) -> tuple[bool, str]:
    """(passed, one line): fail when test accuracy falls by more than `max_drop` (a fraction)."""
    delta = head_accuracy - base_accuracy
    change = f"test accuracy {base_accuracy:.4f} -> {head_accuracy:.4f} ({delta:+.4f})"
    if -delta > max_drop + _TOLERANCE:
        return False, f"FAIL: {change}, a drop of more than compare.max_accuracy_drop = {max_drop:g}"
    return True, f"PASS: {change}, within compare.max_accuracy_drop = {max_drop:g}"


def confusion_matrix(rows: pd.DataFrame, classes=CLASSES) -> pd.DataFrame:
    """Counts from metrics/confusion.csv rows (columns actual, predicted): true classes down, predicted across."""
    counts = pd.crosstab(rows["actual"], rows["predicted"])
    return counts.reindex(index=list(classes), columns=list(classes), fill_value=0)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).replace("|", "\\|")  # a pipe would end the table cell


def _number(value, signed: bool = False) -> str:
    if value is None or np.isnan(value):
        return "—"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def params_markdown(params_diff: dict[str, dict]) -> str:
    """`dvc params diff` of params.yaml (flat keys -> old/new) as a table, or a sentence when empty."""
    if not params_diff:
        return "No params changed."
    lines = ["| param | base | head |", "|---|---|---|"]
    for key in sorted(params_diff):
        lines.append(f"| `{key}` | {_cell(params_diff[key].get('old'))} | {_cell(params_diff[key].get('new'))} |")
    return "\n".join(lines)


def table_markdown(table: pd.DataFrame, first_column: str) -> str:
    lines = [f"| {first_column} | base | head | delta |", "|---|---:|---:|---:|"]
    for row in table.itertuples():
        lines.append(f"| {row.name} | {_number(row.base)} | {_number(row.head)} | {_number(row.delta, signed=True)} |")
    return "\n".join(lines)


def _series(table: pd.DataFrame, metric: str) -> list[float]:
    # One DVCLive step an epoch: the train stage numbers them 1..N (runs before it did 0..N-1).
    return [float(v) for v in table.sort_values("step")[metric]]


def _tick(value: float) -> str:
    return f"{round(value, 10):g}"  # no 0.30000000000000004 on an axis


def _axis_range(values: list[float], lowest: float | None = None, highest: float | None = None) -> tuple[float, float]:
    """A y-axis range a little wider than the values, rounded outwards to a tenth of its span's decade."""
    low, high = min(values), max(values)
    margin = (high - low) * 0.05 or max(abs(high) * 0.05, 0.01)
    step = 10.0 ** math.floor(math.log10(high - low + 2 * margin)) / 10
    low, high = math.floor((low - margin) / step) * step, math.ceil((high + margin) / step) * step
    if lowest is not None:
        low = max(low, lowest)
    if highest is not None:
        high = min(high, highest)
    return low, high


def curves_mermaid(curves: dict[str, dict[str, pd.DataFrame]], metric: str, title: str, y_label: str,
                   bounds: tuple[float | None, float | None] = (None, None)) -> str:
    """One metric's curves of both sides as a fenced Mermaid `xychart-beta` block.

    `curves` is as for curves_figure. Lines come in CHART_LINES order, coloured by the
    init directive's palette. A side that trained fewer epochs has its lines continued
    flat at its last value (a Mermaid line needs a value for every x-axis label, or it is
    not drawn); curves_markdown's caption says so. `bounds` clamps the y-axis.
    """
    series = [_series(curves[side][f"{split}/{metric}"], metric) for side, split, _ in CHART_LINES]
    epochs = max(len(values) for values in series)
    low, high = _axis_range([v for values in series for v in values], *bounds)
    # Half of Mermaid's default height: two charts fit on a screen.
    init = {"xyChart": {"height": 300},
            "themeVariables": {"xyChart": {"plotColorPalette": ", ".join(c for *_, c in CHART_LINES)}}}
    lines = [
        f"%%{{init: {json.dumps(init)}}}%%",
        "xychart-beta",
        f'    title "{title}"',
        f'    x-axis "epoch" [{", ".join(str(e) for e in range(1, epochs + 1))}]',
        f'    y-axis "{y_label}" {_tick(low)} --> {_tick(high)}',
    ]
    for values in series:
        padded = values + [values[-1]] * (epochs - len(values))
        lines.append(f"    line [{', '.join(f'{v:.4f}' for v in padded)}]")
    return "```mermaid\n" + "\n".join(lines) + "\n```"


def _epochs(curves: dict[str, pd.DataFrame]) -> int:
    return min(len(curves[name]) for name in CURVES)


def curves_markdown(curves: dict[str, dict[str, pd.DataFrame]]) -> str:
    """The training-curves section: a loss chart and an accuracy chart with their caption."""
    epochs = {side: _epochs(tables) for side, tables in curves.items()}
    if min(epochs.values()) == 0:
        return "No training curves to draw: " + ", ".join(
            f"{side} has none" for side, n in epochs.items() if n == 0) + "."
    if max(epochs.values()) == 1:
        return "Both sides trained one epoch: no curves to draw (the numbers are in the tables above)."
    caption = CHART_CAPTION
    if len(set(epochs.values())) > 1:
        (short, n_short), (long, n_long) = sorted(epochs.items(), key=lambda item: item[1])
        caption += (f" The {short} trained {n_short} epoch{'s' if n_short > 1 else ''}, the {long} {n_long}: "
                    f"the {short}'s lines stay flat at their last value after epoch {n_short}.")
    return "\n\n".join([
        caption,
        curves_mermaid(curves, "loss", "Loss per epoch", "cross-entropy", bounds=(0.0, None)),
        curves_mermaid(curves, "acc", "Accuracy per epoch", "accuracy", bounds=(0.0, 1.0)),
    ])


def confusion_changes(base: pd.DataFrame, head: pd.DataFrame) -> pd.DataFrame:
    """The cells of two confusion matrices (confusion_matrix tables) whose counts differ.

    Columns: actual, predicted, base, head, delta; the largest changes first, ties in the
    classes' label order (rows, then columns).
    """
    rows = [{"actual": actual, "predicted": predicted, "base": int(base.loc[actual, predicted]),
             "head": int(head.loc[actual, predicted])}
            for actual in head.index for predicted in head.columns]
    table = pd.DataFrame(rows, columns=["actual", "predicted", "base", "head"])
    table["delta"] = table["head"] - table["base"]
    moved = table[table["delta"] != 0]
    order = moved["delta"].abs().sort_values(ascending=False, kind="stable").index
    return moved.loc[order].reset_index(drop=True)


def confusion_markdown(base: pd.DataFrame, head: pd.DataFrame, limit: int = CONFUSION_ROWS) -> str:
    """The confusion section: how many test images each side got right, and the cells that moved."""
    right = {side: int(np.trace(m.to_numpy())) for side, m in (("base", base), ("head", head))}
    totals = {side: int(m.to_numpy().sum()) for side, m in (("base", base), ("head", head))}
    summary = f"Right: base {right['base']} of {totals['base']}, head {right['head']} of {totals['head']} test images."
    changes = confusion_changes(base, head)
    if changes.empty:
        return summary + " No cell of the confusion matrix changed."
    lines = [summary + f" {len(changes)} of {base.size} cells changed"
             + (f"; the {limit} largest changes:" if len(changes) > limit else ":"),
             "",
             "| true class → predicted | base | head | change |",
             "|---|---:|---:|---:|"]
    for row in changes.head(limit).itertuples():
        cell = f"{_cell(row.actual)} → {_cell(row.predicted)}" + (" ✓" if row.actual == row.predicted else "")
        lines.append(f"| {cell} | {row.base} | {row.head} | {row.delta:+d} |")
    lines += ["", "✓: right answers; the other rows are mistakes."]
    return "\n".join(lines)


def render_markdown(*, base_label: str, head_label: str, ok: bool, verdict_line: str,
                    params_diff: dict, metrics: pd.DataFrame, per_class: pd.DataFrame,
                    curves: dict[str, dict[str, pd.DataFrame]], confusion: dict[str, pd.DataFrame],
                    pictures: str, notes: list[str] = ()) -> str:
    """The whole report, which is also the pull request's comment.

    `curves` and `confusion` map "base" and "head" to that side's DVCLive tables and
    confusion matrix; `pictures` is a sentence saying where the PNGs are.
    """
    parts = [
        "# Fashion-MNIST: head vs base",
        f"Base: {base_label}. Head: {head_label}.",
        f"**{'✅' if ok else '❌'} {verdict_line}**",
        *[f"> ⚠️ {note}" for note in notes],
        "## Params",
        params_markdown(params_diff),
        "## Test metrics",
        table_markdown(metrics, "metric"),
        "## Per-class F1 (test set)",
        table_markdown(per_class, "class"),
        "## Training curves",
        curves_markdown(curves),
        "## Confusion matrix (test set)",
        confusion_markdown(confusion["base"], confusion["head"]),
        "## Pictures",
        pictures,
    ]
    return "\n\n".join(parts) + "\n"


def curves_figure(curves: dict[str, dict[str, pd.DataFrame]]) -> Figure:
    """Loss and accuracy per epoch, train (solid) and val (dashed, as `dvc plots show` draws
    them), of each side in one picture.

    `curves` maps a side ("base", "head") to DVCLive's tables keyed "train/loss", ...,
    each with columns `step` and the metric's name.
    """
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, metric, title in ((axes[0], "loss", "cross-entropy"), (axes[1], "acc", "accuracy")):
        for side, color in SIDES.items():
            for split, style in (("train", "-"), ("val", "--")):
                values = _series(curves[side][f"{split}/{metric}"], metric)
                ax.plot(range(1, len(values) + 1), values, style, marker="o", color=color, label=f"{side} {split}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle("Training curves: base (blue) vs head (orange), train solid, validation dashed", fontsize=10)
    fig.tight_layout()
    return fig


def confusion_figure(matrices: dict[str, pd.DataFrame]) -> Figure:
    """The sides' confusion matrices next to each other, on one colour scale, counts written in."""
    vmax = max(int(m.to_numpy().max()) for m in matrices.values()) or 1
    fig = Figure(figsize=(6.5 * len(matrices), 6))
    axes = fig.subplots(1, len(matrices))
    for ax, (side, matrix) in zip(np.atleast_1d(axes), matrices.items(), strict=True):
        counts = matrix.to_numpy()
        ax.imshow(counts, cmap="Blues", vmin=0, vmax=vmax)
        for (i, j), n in np.ndenumerate(counts):
            if n:
                ax.text(j, i, str(n), ha="center", va="center", fontsize=7,
                        color="white" if n > vmax / 2 else "black")
        ax.set_xticks(range(len(matrix.columns)), matrix.columns, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(matrix.index)), matrix.index, fontsize=8)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"{side}: {int(np.trace(counts))} of {int(counts.sum())} right")
    fig.suptitle("Confusion matrices (test set)", fontsize=10)
    fig.tight_layout()
    return fig
