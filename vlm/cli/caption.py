"""``vlm caption IMAGE_OR_DIR...``: greedy, beam-search or nucleus-sampled captions, batched.

The decoding flags (``--beams``, ``--max-tokens``, ``--top-p``, ...) are derived from the fields of
``vlm.generation.GenerationConfig``, which the API's ``Pipeline.caption`` takes too.
"""

from __future__ import annotations

from typing import Optional

from vlm.cli.common import Parser, Reporter, add_model_args, iter_batches, load_pipeline, with_ood


def build_parser() -> Parser:
    from vlm.cli.options import add_dataclass_flags
    from vlm.generation.config import GenerationConfig

    p = Parser(prog="vlm caption", description="Caption images with a CoCa model.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    add_model_args(p, precision="fp32")
    add_dataclass_flags(p, GenerationConfig, title="decoding (vlm.generation.GenerationConfig)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    from vlm.cli.options import dataclass_from_flags
    from vlm.generation.config import GenerationConfig

    args = build_parser().parse_args(argv)
    gen = dataclass_from_flags(GenerationConfig, args).validate()  # bad options fail before the model loads
    pipe = load_pipeline(args)
    gen = pipe.generation_config(gen)  # a model without a decoder, or beams x batch too large, fails here
    out = Reporter(args.json, "caption")
    with pipe.ood_run():  # one out-of-distribution notice for the whole run, counting every image
        for batch in iter_batches(args.inputs, args.batch_size):
            good = [it for it in batch if it.error is None]
            captions = iter(pipe.caption([it.image for it in good], gen) if good else [])
            for it in batch:
                if it.error is not None:
                    out.error(it)
                else:
                    cap = next(captions)
                    out.result(with_ood({"image": it.source, "caption": str(cap)}, cap), f"{it.source}: {cap}")
    return out.exit_code
