"""Pretraining: the loop (trainer), Muon + AdamW (optim), LR/MTP schedules, atomic checkpoints, torchrun wrapping."""

import importlib

# name -> submodule, imported on first use so that building the CLI's parser does not load torch.
_EXPORTS = {
    "evaluate_bpb": "metrics",
    "Muon": "optim",
    "OptimConfig": "optim",
    "build_optimizers": "optim",
    "zeropower_via_newtonschulz5": "optim",
    "ScheduleConfig": "schedule",
    "lr_factor": "schedule",
    "mtp_weight": "schedule",
    "Stage": "trainer",
    "TrainConfig": "trainer",
    "fit": "trainer",
    "train": "trainer",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Muon", "OptimConfig", "ScheduleConfig", "Stage", "TrainConfig", "build_optimizers", "evaluate_bpb", "fit",
           "lr_factor", "mtp_weight", "train", "zeropower_via_newtonschulz5"]
