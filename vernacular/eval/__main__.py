"""`python -m vernacular.eval ...`: lm-evaluation-harness's own command line, with the `vernacular` model registered.

lm-eval 0.4.13 looks models up in its registry only (no plugin entry points, no `module:Class` syntax), so
`lm_eval --model vernacular` cannot find an external class; this is the same CLI (`lm_eval.__main__.cli_evaluate`)
after importing `vernacular.eval.lm`, which registers it. Example:

    python -m vernacular.eval run --model vernacular --model_args run_dir=runs/speedrun \
        --include_path vernacular/eval/tasks --tasks sib200-eu --limit 10
"""

import vernacular.eval.lm  # noqa: F401  (registers "vernacular" in lm-eval's model registry)
from lm_eval.__main__ import cli_evaluate

if __name__ == "__main__":
    cli_evaluate()
