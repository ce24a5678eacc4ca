"""Pretraining: the loop (trainer), Muon + AdamW (optim), LR/MTP schedules, atomic checkpoints, torchrun wrapping."""

from .metrics import evaluate_bpb
from .optim import Muon, OptimConfig, build_optimizers, zeropower_via_newtonschulz5
from .schedule import ScheduleConfig, lr_factor, mtp_weight
from .trainer import TrainConfig, train

__all__ = ["Muon", "OptimConfig", "ScheduleConfig", "TrainConfig", "build_optimizers", "evaluate_bpb", "lr_factor",
           "mtp_weight", "train", "zeropower_via_newtonschulz5"]
