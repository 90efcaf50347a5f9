"""A sweep's request that a trial stop early (Optuna pruning), as the training loop asks it.

    should_stop = stop_request(world)   # None unless FMNIST_STOP_FILE is set and one process trains
    fit(..., should_stop=should_stop)

When the file FMNIST_STOP_FILE names appears, a one-process run stops at its next check
(every CHECK_EVERY batches), drops the epoch under way and ends as if the last epoch it
finished were the last: the model, summary (with "stopped_early": true) and curves of
the epochs it did. Its first epoch always runs to the end, so there is a model to keep.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from fmnist.training.distributed import World

STOP_ENV = "FMNIST_STOP_FILE"


def stop_request(world: World) -> Callable[[int, int], bool] | None:
    """The loop's should_stop(epoch, batches) for this run, or None when nothing can ask it to stop."""
    path = os.environ.get(STOP_ENV)
    if not path or world.size > 1:  # several ranks would have to agree on the batch to stop at
        return None
    return lambda epoch, batches: epoch > 1 and os.path.exists(path)
