"""`vernacular plan`: from a budget to a model, a schedule, a parallel layout and an energy bill (and back).

`hardware` is the accelerator table, `scaling` the compute-optimal allocation and generated configs, `planner` the
forward and inverse plans and the layout search. Every FLOP and memory figure comes from `vernacular.model.info`, the
one accounting module (shared with `vernacular model info`, the trainer's MFU and the AI Act documents).
"""
