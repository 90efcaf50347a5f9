"""The comparison report of `make compare`: tables, verdict, markdown and pictures, from data.

    table = metrics_table(eval_diff)              # DataFrame: metric, base, head, delta
    ok, line = verdict(base_acc, head_acc, 0.005)
    fig = curves_figure({"base": base_curves, "head": head_curves})
    text = render_markdown(...)

Everything takes plain dicts and DataFrames and returns DataFrames, strings or figures;
`scripts/compare.py` reads git and DVC and writes the files.
"""

from __future__ import annotations

# Figures are built with matplotlib's object API, not pyplot: no backend to choose, no
# screen needed, nothing global changed for a notebook that imports this module.
from matplotlib.figure import Figure
import numpy as np
import pandas as pd

from fmnist.data import CLASSES

# The headline metrics of metrics/eval.json, in the order the report lists them.
METRICS = {"test_acc": "test accuracy", "test_loss": "test loss", "test_f1_macro": "macro F1"}
# DVCLive's curves: metrics/train/plots/metrics/<split>/<name>.tsv, a column named <name>.
CURVES = ("train/loss", "val/loss", "train/acc", "val/acc")
SIDES = {"base": "tab:blue", "head": "tab:orange"}
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


def render_markdown(*, base_label: str, head_label: str, ok: bool, verdict_line: str,
                    params_diff: dict, metrics: pd.DataFrame, per_class: pd.DataFrame,
                    pictures: dict[str, str], notes: list[str] = ()) -> str:
    """The whole report. `pictures` maps a caption to a file name beside the report."""
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
        "## Pictures",
        "Files beside this report: " + ", ".join(f"`{name}` ({caption})" for caption, name in pictures.items()) + ".",
        *[f"![{caption}]({name})" for caption, name in pictures.items()],
    ]
    return "\n\n".join(parts) + "\n"


def curves_figure(curves: dict[str, dict[str, pd.DataFrame]]) -> Figure:
    """Loss and accuracy per epoch, train (dashed) and val (solid), of each side in one picture.

    `curves` maps a side ("base", "head") to DVCLive's tables keyed "train/loss", ...,
    each with columns `step` and the metric's name.
    """
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, metric, title in ((axes[0], "loss", "cross-entropy"), (axes[1], "acc", "accuracy")):
        for side, color in SIDES.items():
            for split, style in (("train", "--"), ("val", "-")):
                table = curves[side][f"{split}/{metric}"]
                # DVCLive counts steps from 0; the train stage takes one step per epoch.
                ax.plot(table["step"] + 1, table[metric], style, marker="o", color=color, label=f"{side} {split}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle("Training curves: base (blue) vs head (orange), train dashed, validation solid", fontsize=10)
    fig.tight_layout()
    return fig


def confusion_figure(matrices: dict[str, pd.DataFrame]) -> Figure:
    """The sides' confusion matrices next to each other, on one colour scale, counts written in."""
    vmax = max(int(m.to_numpy().max()) for m in matrices.values()) or 1
    fig = Figure(figsize=(6.5 * len(matrices), 6))
    axes = fig.subplots(1, len(matrices))
    for ax, (side, matrix) in zip(np.atleast_1d(axes), matrices.items()):
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
