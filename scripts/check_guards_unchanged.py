"""Do the decoding guards change any caption of the default model on held-out shapes scenes?

Decodes each scene twice, guards and word list off (``block_degenerate=False``, no lexicon) and on
(what ``vlm caption`` does), and prints how many captions differ, greedy and beam search.

    vlm data shapes --out /tmp/guards/shapes1000 --n 1000 --seed 7
    python scripts/check_guards_unchanged.py --images /tmp/guards/shapes1000/images --greedy 1000 --beam 300
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--greedy", type=int, default=1000, help="scenes decoded greedily")
    p.add_argument("--beam", type=int, default=300, help="scenes decoded with beam search (3 beams)")
    p.add_argument("--batch-size", type=int, default=50)
    args = p.parse_args(argv)

    import vlm
    from vlm.generation.config import GenerationConfig
    from vlm.generation.decode import caption_texts

    pipe = vlm.load()
    paths = sorted(args.images.glob("*.png"))
    for name, n, beams in (("greedy", args.greedy, 1), ("beam 3", args.beam, 3)):
        changed, examples = 0, []
        for i in range(0, min(n, len(paths)), args.batch_size):
            x = pipe.images_to_tensor(paths[i:min(i + args.batch_size, n)])
            off = caption_texts(pipe.model, x, pipe.tokenizer, GenerationConfig(beams=beams, block_degenerate=False))
            on = caption_texts(pipe.model, x, pipe.tokenizer, GenerationConfig(beams=beams), lexicon=pipe.lexicon)
            diff = [(a, b) for a, b in zip(off, on) if a != b]
            changed += len(diff)
            examples += diff[:3 - len(examples)]
        print(f"{name}: {changed} of {min(n, len(paths))} captions changed by the guards {examples}")
    print(f"load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
