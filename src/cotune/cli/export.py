"""``cotune export RUN_DIR --format {llava,causal-lm} --out DIR``: a run in a format other tools load.

``llava``: a LLaVA-style run (CLIP or SigLIP without bottleneck adapters, mlp2x-gelu or linear
projector, LoRA or full LLM) as a transformers ``LlavaForConditionalGeneration`` directory with its
processor and chat template, what vLLM, SGLang and TGI serve. ``causal-lm``: the text path of any
run as an ``AutoModelForCausalLM`` directory. Both carry a README.md model card; a run the format
cannot express is refused in one line saying why and what would work (docs/export.md).
"""

from __future__ import annotations

import argparse

from cotune.export import FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN_DIR", help="a training run directory (or a saved model directory)")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="format",
                        help="llava: LlavaForConditionalGeneration + processor; causal-lm: the text path as a plain causal LM")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the export goes (must not exist or be empty)")
    parser.add_argument("--device", default=None, help="device to load and check the run on, e.g. cpu or cuda (default: where the backbones load)")


def run(args: argparse.Namespace) -> int:
    """Export a run as a transformers LLaVA directory or a plain causal LM (with a model card)."""
    from cotune.export import export_run

    facts = export_run(args.run, args.out, args.format, device=args.device)
    print(f"max |logit difference| from cotune on the probe: {facts['max_logit_diff']:.3g}")
    print(args.out)
    return 0
