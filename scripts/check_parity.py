"""Print how far converted models are from their sources: max |difference| of embeddings, cosine
matrices and caption logits, greedy-token agreement, tokenizer and preprocessing agreement.

The figures recorded in BENCHMARKS.md ("Conversion exactness") come from this script. Weights
are random and non-degenerate (``tests/parity_weights.py: randomize_``), as this machine cannot
download real ones; the layouts are the real ones:

- open_clip: every supported architecture at tiny width (``shrink_open_clip_cfg``), plus the
  full-size coca_ViT-B-32 (``--full``, about 1 GB of RAM and 20 s);
- transformers: a ``CLIPModel`` directory written by ``save_pretrained`` (tiny width), against
  ``get_image_features`` / ``get_text_features``;
- the CLIP BPE tokenizer against open_clip's on a seeded random corpus; preprocessing against
  open_clip's transform and transformers' ``CLIPImageProcessorPil``.

    python scripts/check_parity.py --full --json-out parity.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # parity_weights: the test helpers

SOT, EOT = 49406, 49407
TEXTS = ["a photo of a cat", "two dogs playing in the snow next to a red car", "", "émoji 😀 and punctuation!!!",
         "a " * 60]


def _d(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


def _greedy_reference(oc, images, n):
    """Greedy decoding through open_clip's own CoCa forward (full prefix each step), EOT banned."""
    ids = torch.full((images.shape[0], 1), SOT)
    latent, embs = oc._encode_image(images)
    for _ in range(n):
        logits = oc(images, ids, image_latent=latent, image_embs=embs, output_labels=False)["logits"][:, -1]
        logits[:, EOT] = float("-inf")
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
    return ids[:, 1:].tolist()


def open_clip_parity(arch: str, full: bool, quick: bool = False) -> dict:
    import open_clip

    from vlm.convert.open_clip import config_from_open_clip, from_open_clip_model
    from parity_weights import randomize_, shrink_open_clip_cfg
    from vlm.generation.config import GenerationConfig, SpecialTokens
    from vlm.generation.decode import generate
    from vlm.tokenizers.clip_bpe import CLIPBPETokenizer

    cfg = open_clip.get_model_config(arch) if full else shrink_open_clip_cfg(open_clip.get_model_config(arch))
    cfg["quick_gelu"] = quick
    coca = "multimodal_cfg" in cfg
    cls = open_clip.CoCa if coca else open_clip.CLIP
    oc = randomize_(cls(**{k: v for k, v in cfg.items() if k != "custom_text"}), seed=0, logit_gain=4.0).eval()
    model = from_open_clip_model(oc, config_from_open_clip(cfg))
    size = model.cfg.vision.image_size
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    text = CLIPBPETokenizer()(TEXTS, context_length=model.cfg.text.context_length)
    res = {}
    with torch.no_grad():
        oi, ot = oc.encode_image(images, normalize=True), oc.encode_text(text, normalize=True)
        vi, vt = model.encode_image(images), model.encode_text(text)
        res.update(image_embeds=_d(oi, vi), text_embeds=_d(ot, vt), cosines=_d(oi @ ot.t(), vi @ vt.t()),
                   image_embed_spread=float((vi @ vi.t()).fill_diagonal_(0).abs().max()))
        if coca:
            ref, out = oc(images[:2], text[:2]), model(images[:2], text[:2])
            res.update(caption_logits=_d(ref["logits"], out.caption_logits),
                       caption_logit_std=float(out.caption_logits.std()))
            n = 8 if full else 20
            theirs = _greedy_reference(oc, images, n)
            ours = generate(model, images, SpecialTokens(SOT, EOT, 0), GenerationConfig(max_tokens=n, min_tokens=n))
            res["greedy_tokens_identical"] = f"{sum(a == b for a, b in zip(ours, theirs))}/{len(ours)} rows x {n}"
    return res


def hf_parity() -> dict:
    import transformers

    from vlm.convert.hf import convert_hf_dir

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_convert_hf import make_hf_dir  # the same CLIPModel directory the tests build

    out = {}
    for act, eos in (("quick_gelu", 49407), ("gelu", 49407), ("quick_gelu", 2)):
        with tempfile.TemporaryDirectory() as d:
            hf = make_hf_dir(Path(d), act=act, eos=eos, seed=1)  # random weights, saved as on the Hub
            model, tok = convert_hf_dir(d)
            enc = transformers.CLIPTokenizer.from_pretrained(d)(TEXTS, padding="max_length", max_length=77,
                                                                  truncation=True, return_tensors="pt")
            ids = tok(TEXTS, 77)
            images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                hi = hf.get_image_features(pixel_values=images)
                ht = hf.get_text_features(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
                hi, ht = getattr(hi, "pooler_output", hi), getattr(ht, "pooler_output", ht)
                vi, vt = model.encode_image(images, normalize=False), model.encode_text(ids, normalize=False)
                out[f"{act}, eos_token_id={eos}"] = {
                    "image_features": _d(hi, vi), "text_features": _d(ht, vt),
                    "cosines": _d(F.normalize(hi, dim=-1) @ F.normalize(ht, dim=-1).t(),
                                  F.normalize(vi, dim=-1) @ F.normalize(vt, dim=-1).t()),
                    "ids_identical": bool(torch.equal(enc.input_ids[ids != 0], ids[ids != 0]))}
    return out


def preprocessing_parity() -> dict:
    import open_clip
    import transformers
    from PIL import Image

    from vlm.io.images import PreprocessConfig, preprocess

    sizes = [(300, 200), (224, 224), (97, 401), (641, 480), (67, 64), (225, 224)]
    images = [Image.effect_noise(s, 60).convert("RGB") for s in sizes]
    oc = open_clip.image_transform(224, is_train=False)
    hf = transformers.CLIPImageProcessorPil()
    res = {"open_clip (round crop)": max(_d(preprocess(im, PreprocessConfig(image_size=224)), oc(im)) for im in images),
           "transformers CLIPImageProcessorPil (floor crop)": max(
               _d(preprocess(im, PreprocessConfig(image_size=224, crop_rounding="floor")), hf(im, return_tensors="pt").pixel_values[0])
               for im in images),
           "transformers CLIPImageProcessor (torchvision backend, floor crop)": max(
               _d(preprocess(im, PreprocessConfig(image_size=224, crop_rounding="floor")),
                  transformers.CLIPImageProcessor()(im, return_tensors="pt").pixel_values[0]) for im in images),
           "image sizes": [list(s) for s in sizes]}
    return res


def tokenizer_parity() -> dict:
    import importlib

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_tokenizer_parity import random_corpus

    from vlm.tokenizers import CLIPBPETokenizer

    ref = importlib.import_module("open_clip.tokenizer").SimpleTokenizer()
    texts = random_corpus()
    ours = CLIPBPETokenizer()
    same = sum(torch.equal(ours([t], 77), ref([t], context_length=77)) for t in texts)
    return {"open_clip tokenize, random corpus": f"{same}/{len(texts)} identical"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="also the full-size coca_ViT-B-32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from vlm.convert.open_clip import SUPPORTED_ARCHS

    res: dict = {"open_clip tiny": {a: open_clip_parity(a, False) for a in SUPPORTED_ARCHS}}
    res["open_clip tiny"]["ViT-B-32 quick_gelu"] = open_clip_parity("ViT-B-32", False, quick=True)
    if args.full:
        res["open_clip full coca_ViT-B-32"] = open_clip_parity("coca_ViT-B-32", True)
    res["transformers CLIPModel tiny"] = hf_parity()
    res["preprocessing max abs diff"] = preprocessing_parity()
    res["tokenizer"] = tokenizer_parity()
    print(json.dumps(res, indent=2, ensure_ascii=False))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
