"""Learning-rate and MTP-weight schedules as pure functions of (step, progress).

`progress` is the fraction of the run done, in [0, 1]: step / total_steps for a step budget, elapsed / budget seconds
for a time budget. Warmup counts optimizer steps in both cases. WSD (warmup-stable-decay, Hu et al. 2024; Hägele et al.
2024) is the default because it needs no total length until the decay starts, which is exactly what a wall-clock
budget (`--minutes`) offers; 1-sqrt is the decay shape Hägele et al. found best.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("wsd", "cosine")
DECAY_SHAPES = ("linear", "1-sqrt", "cosine")


@dataclass
class ScheduleConfig:
    kind: str = "wsd"
    warmup: int = 20  # optimizer steps of linear warmup
    decay_frac: float = 0.3  # WSD: last fraction of the run spent decaying
    decay_shape: str = "1-sqrt"
    min_lr_ratio: float = 0.0  # final LR as a fraction of the peak
    mtp_weight: float = 0.3  # DeepSeek-V3: 0.3 for the first ~2/3 of tokens ...
    mtp_weight_late: float = 0.1  # ... then 0.1
    mtp_switch: float = 0.7

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r}: choose one of {', '.join(SCHEDULES)}")
        if self.decay_shape not in DECAY_SHAPES:
            raise ValueError(f"unknown decay shape {self.decay_shape!r}: choose one of {', '.join(DECAY_SHAPES)}")
        if not 0.0 <= self.decay_frac <= 1.0:
            raise ValueError(f"decay_frac must be in [0, 1], got {self.decay_frac}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")


def _decay(x: float, shape: str) -> float:
    """1 -> 0 as x goes 0 -> 1."""
    x = min(max(x, 0.0), 1.0)
    if shape == "linear":
        return 1.0 - x
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(x)
    return 0.5 * (1.0 + math.cos(math.pi * x))


def lr_factor(cfg: ScheduleConfig, step: int, progress: float) -> float:
    """Multiplier of the peak LR for optimizer step `step` (0-based) at run fraction `progress`."""
    warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup > 0 else 1.0
    if cfg.kind == "cosine":
        shape = _decay(progress, "cosine")
    else:
        start = 1.0 - cfg.decay_frac
        shape = 1.0 if progress < start or cfg.decay_frac == 0 else _decay((progress - start) / cfg.decay_frac,
                                                                             cfg.decay_shape)
    return warm * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape)


def mtp_weight(cfg: ScheduleConfig, progress: float) -> float:
    return cfg.mtp_weight if progress < cfg.mtp_switch else cfg.mtp_weight_late
