"""eval: benchmark scorers that reproduce the official GQA, ScienceQA, TextVQA, POPE, MME and
MMBench scorers (../shared/eval-spec.md), the evaluation runner, and the exposure-bias and
attention analyses.

Built so far: `python -m eval score` for POPE (eval/pope.py), GQA (eval/gqa.py) and ScienceQA-IMG
(eval/sqa.py). TextVQA, MME, MMBench, the runner, the suite and the analyses are still to come
(issue 4); `python -m distill heldout` scores the synthetic held-out split meanwhile, and
`python -m distill synth` writes the benchmark files in the official formats.
"""
