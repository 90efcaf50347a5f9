"""An exponential moving average of a net's weights: what is scored and saved with train.ema > 0.

    ema = Ema(net, decay=0.998)
    ...; optimizer.step(); ema.update()     # after every step
    ema.module                              # the averaged net
"""

from __future__ import annotations

import copy

import torch


class Ema:
    """An exponential moving average of a net's weights and BatchNorm statistics.

    `module` is a copy of the net that holds the average; it is what gets scored and
    saved when `train.ema` is on. The decay warms up as min(decay, (1 + t) / (10 + t))
    after t updates, so the random initial weights fade out fast. Its state (the
    average and t) goes into the checkpoint, so a resumed run averages exactly as an
    uninterrupted one.
    """

    def __init__(self, net: torch.nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.module = copy.deepcopy(net).requires_grad_(False).eval()
        # Tensors that share storage with the modules' own, so in-place updates reach them.
        averaged, current = self.module.state_dict(), net.state_dict()
        floats = [k for k, v in averaged.items() if v.is_floating_point()]
        self._floats = [averaged[k] for k in floats], [current[k] for k in floats]
        self._others = [(averaged[k], current[k]) for k in averaged if k not in floats]  # BatchNorm's counters

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(*self._floats, 1 - decay)
        for averaged, current in self._others:
            averaged.copy_(current)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "state_dict": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["state_dict"])
        self.updates = int(state["updates"])
