"""Run open_clip's own ``CoCa.generate`` on a `vlm export open_clip` directory; print the tokens as JSON.

Runs in an interpreter where open_clip's generate works (open_clip 3.3 needs transformers < 4.56, e.g.
the reference venv /work/venv-oc) and imports nothing from vlm: it reads the exported directory the way
an open_clip user would. tests/test_export_open_clip.py compares the tokens with vlm's greedy captions.

    /work/venv-oc/bin/python scripts/check_export_open_clip.py DIR inputs.safetensors --tokens 10
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("directory", help="a `vlm export open_clip` output directory")
    p.add_argument("inputs", help="safetensors file holding 'images' (B, 3, S, S)")
    p.add_argument("--tokens", type=int, default=10, help="caption length forced on open_clip's greedy search")
    p.add_argument("--sot", type=int, default=49406)
    p.add_argument("--eot", type=int, default=49407)
    args = p.parse_args()

    import open_clip
    import torch
    import transformers
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    model = open_clip.create_model(f"local-dir:{args.directory}").eval()
    images = load_file(args.inputs)["images"]
    n = args.tokens
    with torch.no_grad():
        out = model.generate(images, seq_len=n + 1, min_seq_len=n, sot_token_id=args.sot, eos_token_id=args.eot,
                             pad_token_id=0, generation_type="top_k", top_k=1, fixed_output_length=True)
        embeds = model.encode_image(images, normalize=True)
    print(json.dumps({"tokens": out[:, 1:].tolist(), "image_embeds": embeds.tolist(),
                      "open_clip": open_clip.__version__, "transformers": transformers.__version__}))


if __name__ == "__main__":
    main()
