"""Stage `eval`: lm-evaluation-harness driven in-process on our checkpoints.

- `lm.VernacularLM`: the lm-eval model class (registered as "vernacular");
- `groups`: task groups named as in OpenEuroLLM's oellm-eval, resolved per language to lm-eval task names;
- `tasks/`: the offline tasks (lm-eval YAML) over the FLORES-200 sentences in `data/` (CC BY-SA 4.0);
- `aggregate`: centred accuracy per language and overall, mean bits per byte;
- `cli`: `vernacular eval`.
"""
