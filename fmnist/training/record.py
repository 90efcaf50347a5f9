"""What a training run records as it goes, on rank 0: after every epoch the checkpoint,
the summary (metrics/train.json) and a row of DVCLive curves, and a line on the console.

    record = Record(checkpoint, summary, live_dir, key, p, progress)   # opens DVCLive's folder
    fit(..., on_epoch=record.epoch)
    record.finish(progress, model, environment)      # the model file: the best epoch's weights and card

DVCLive's step is the epoch, 1 to train.epochs, so `dvc exp show`, `dvc plots` and the VS
Code extension show a run while it trains; a killed run leaves the epochs it did, and the
next run starts the folder afresh (a resumed one first logs the epochs it restored).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fmnist.core.io import save_torch, write_json, writing
from fmnist.model.model_file import save_model
from fmnist.training.checkpoint import checkpoint_state
from fmnist.training.loop import Progress, TrainState

if TYPE_CHECKING:
    from fmnist.params import Train


def summary(progress: Progress, p: Train) -> dict:
    """The headline figures of metrics/train.json, as `dvc metrics show` and `dvc exp show` list
    them: the best epoch's validation accuracy and the epochs done (a run's progress while it
    trains). Two columns, so that the table of experiments reads in 120 columns; which epoch
    was best is in the model file's card (`fmnist-predict --info`) and the stage's log."""
    figures = {"best_val_acc": progress.best["val_acc"], "epoch": progress.epoch}
    return {**figures, "stopped_early": True} if progress.epoch < p.epochs else figures


def _log_row(live, epoch: int, row: dict) -> None:
    live.step = epoch  # the curves' x axis counts epochs from 1, as the console does
    for name, value in row.items():
        live.log_metric(name, value)
    live.next_step()


class Record:
    """The files one run writes while it trains, and its console lines."""

    def __init__(self, checkpoint: Path, summary_file: Path, live_dir: Path, key: dict, state: TrainState, p: Train,
                 progress: Progress | None):
        from dvclive import Live  # rank 0 only: the other ranks never log

        self.checkpoint, self.summary_file, self.live_dir = checkpoint, summary_file, live_dir
        self.key, self.state, self.p = key, state, p
        with writing(live_dir):  # DVCLive's own writes name no file when the disk is full
            self.live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
            for epoch, row in enumerate(progress.history if progress else [], 1):  # what a resumed run did before
                _log_row(self.live, epoch, row)
        print("loss: plain cross-entropy, train's on its augmented batches"
              + (f"; smoothed: the label-smoothed loss minimised (train.label_smoothing {p.label_smoothing:g})"
                 if p.label_smoothing else ""))

    def epoch(self, progress: Progress, seconds: float) -> None:
        """After each epoch (fit's on_epoch)."""
        row = progress.history[-1]
        # The checkpoint first: when it can't be written, the summary still tells the truth.
        save_torch(self.checkpoint, checkpoint_state(progress, self.key, self.state))
        write_json(self.summary_file, summary(progress, self.p))
        with writing(self.live_dir):
            _log_row(self.live, progress.epoch, row)
        smoothed = f" (smoothed {row['train/loss_smoothed']:.4f})" if self.p.label_smoothing else ""
        print(f"epoch {progress.epoch}/{self.p.epochs}: train loss {row['train/loss']:.4f}{smoothed} "
              f"acc {row['train/acc']:.4f} | val loss {row['val/loss']:.4f} acc {row['val/acc']:.4f} "
              f"| {seconds:.1f} s", flush=True)

    def finish(self, progress: Progress, model: Path, environment: dict[str, str]) -> None:
        """At the end: the curves closed, the final summary, the best epoch's weights and card as the model file."""
        with writing(self.live_dir):
            self.live.end()
        write_json(self.summary_file, summary(progress, self.p))
        best = progress.best
        save_model(model, best["state_dict"], params=self.p.model_dump(), epoch=best["epoch"], val_acc=best["val_acc"],
                   data_sha256=self.key["data_sha256"], environment=environment)
        stopped = f"; stopped after epoch {progress.epoch} of {self.p.epochs}, as the sweep asked"
        print(f"saved epoch {best['epoch']} (val acc {best['val_acc']:.4f}) to {model}"
              + (stopped if progress.epoch < self.p.epochs else ""))
