"""EU AI Act documents generated from a run's own records: the public summary of training content (Art. 53(1)(d),
the Commission's template), the Annex XI technical documentation, the copyright policy (Art. 53(1)(c)), the model
card of the HF export, and the energy records (codecarbon) that feed them."""
