"""`python -m distill` (or `distill`): the kit's command line.

    python -m distill quickstart                 # the whole tiny default: data, teacher, students, table
    python -m distill synth --out data/shapes    # the synthetic dataset
    python -m distill pretrain-vision            # the tiny teacher's pretrained vision tower
    python -m distill train CONFIG.yaml [k=v]    # one training stage
    python -m distill build-student ...          # vision encoder + LLM + fresh projector -> one checkpoint
    python -m distill random-student --out DIR   # a random-weight 0.5B-shaped student (speed, memory)
    python -m distill check ...                  # validate a teacher/student pair and a dataset
    python -m distill heldout --model DIR        # accuracy per question family on the held-out split
    python -m distill bench                      # step time and memory: SFT vs KD, chunked vs naive KL
    python -m distill irs --model DIR            # IRS per teacher layer and the layer IVA uses
    python -m distill ablate                     # the Align-TI component ablation, 3 seeds each

Each subcommand lives in its own module, which provides `add_arguments(parser)` and `run(args)`.
"""

from __future__ import annotations

import argparse
import os
import sys

from distill.command_line import run_command, subcommand_parser
from distill.process_memory import use_huge_pages

COMMANDS = {
    "quickstart": ("distill.quickstart", "run the tiny default end to end (no downloads, CPU is enough)"),
    "synth": ("distill.synth.make", "write the synthetic shapes dataset, benchmark files and tokenizer"),
    "pretrain-vision": (
        "distill.pretrain_vision",
        "pretrain the tiny default's vision tower on the shapes world's scenes",
    ),
    "train": ("distill.train", "train one stage from a YAML config with dotted overrides"),
    "build-student": ("distill.build_student", "assemble a student from a vision encoder and an LLM"),
    "random-student": (
        "distill.random_student",
        "a random-weight LLaVA of a real shape (for speed and memory)",
    ),
    "check": ("distill.check", "validate a teacher/student pair and a dataset without training"),
    "heldout": ("distill.heldout", "accuracy per question family on the synthetic held-out split"),
    "bench": ("distill.bench", "step time and peak memory of the objectives, chunked vs naive KL"),
    "irs": ("distill.irs", "Instruction-Relevance Score per teacher layer; picks IVA's layer l*"),
    "ablate": ("distill.ablate", "SFT / KD / KD+IVA / KD+TPA / Align-TI students over seeds, one table"),
}


def build_parser() -> argparse.ArgumentParser:
    return subcommand_parser(
        "distill",
        "Distil a small LLaVA-style model from a large teacher (SFT, vanilla KD, Align-TI, GKD, LLaVADI, EM-KD).",
        COMMANDS,
    )


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the kit never downloads models at run time
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    use_huge_pages()  # before anything imports torch
    parser = build_parser()
    from distill.errors import KNOWN_ERRORS

    return run_command(parser, argv, KNOWN_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
