"""``vlm caption IMAGE_OR_DIR...``: greedy, beam-search or nucleus-sampled captions, batched."""

from __future__ import annotations

from typing import Optional

from vlm.cli.common import Parser, Reporter, add_model_args, iter_batches, load_pipeline


def build_parser() -> Parser:
    p = Parser(prog="vlm caption", description="Caption images with a CoCa model.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    add_model_args(p)
    p.add_argument("--beams", type=int, default=1, help="beam search with N beams (1: greedy)")
    p.add_argument("--max-tokens", type=int, default=30, help="longest caption, in tokens")
    p.add_argument("--min-tokens", type=int, default=0, help="shortest caption, in tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling with this probability mass")
    p.add_argument("--top-k", type=int, default=None, help="sample from the K most likely tokens")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    pipe = load_pipeline(args)
    gen = dict(beams=args.beams, max_tokens=args.max_tokens, min_tokens=args.min_tokens, top_p=args.top_p,
               top_k=args.top_k, temperature=args.temperature, repetition_penalty=args.repetition_penalty,
               seed=args.seed)
    pipe.generation_config(**gen)  # bad options fail here, before any image is read
    out = Reporter(args.json)
    for batch in iter_batches(args.inputs, args.batch_size):
        good = [it for it in batch if it.error is None]
        captions = iter(pipe.caption([it.image for it in good], **gen) if good else [])
        for it in batch:
            if it.error is not None:
                out.error(it, "caption")
            else:
                cap = next(captions)
                out.result({"image": it.source, "caption": cap}, f"{it.source}: {cap}")
    return out.exit_code
