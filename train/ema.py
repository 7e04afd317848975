"""Exponential moving average of parameters, as the official `modeling/modules/ema_model.py` (spec §1.8).

At the j-th update the decay is 0 for j = 1 (a plain copy) and min(decay, (1 + s) / (10 + s)), s = j − 1, after
that. Only parameters are averaged; buffers come from the model's constructor.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = decay
        self.num_updates = 0
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters()}

    def current_decay(self) -> float:
        if self.num_updates <= 1:
            return 0.0
        s = self.num_updates - 1
        return min(self.decay, (1 + s) / (10 + s))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        decay = self.current_decay()
        for name, p in model.named_parameters():
            shadow = self.shadow[name]
            if p.requires_grad and decay > 0:
                shadow.sub_((1 - decay) * (shadow - p.detach()))
            else:  # the first update, and frozen parameters: a plain copy
                shadow.copy_(p.detach())

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> nn.Module:
        for name, p in model.named_parameters():
            p.copy_(self.shadow[name])
        return model

    def state_dict(self) -> dict:
        return {"num_updates": self.num_updates, "decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
