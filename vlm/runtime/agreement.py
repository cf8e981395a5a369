"""How close a reduced-precision model stays to its float32 self, on the user's own images.

    >>> ref, low = vlm.load(precision="fp32"), vlm.load(precision="bf16")
    >>> tally = Agreement()
    >>> tally.add(ref, low, pil_images)          # any number of batches
    >>> tally.report()                           # {"next_token_agreement": 0.998, ...}

Per batch of images:

- the float32 model captions them (greedy, the pipeline's defaults); both models then read those
  captions teacher-forced, and at every caption position (each word and the end) the top-1
  next token of the reduced model is compared with float32's: ``next_token_agreement``;
- the reduced model captions them itself: ``identical_captions`` is the share of images whose
  caption is the same string (one early flip changes the rest of a caption, so this is lower);
- cosine of the image embeddings, and of the text embeddings of the float32 captions, to
  float32's: ``image_cosine`` / ``text_cosine`` (mean and minimum).

``reference_top1_probability`` (the median probability of float32's own top-1 token) says how
peaked the model's next-token distributions are: a trained model is near 1; a model with random
weights is near 0, and there any rounding flips the argmax, so agreement judges nothing.
Used by ``vlm check-precision``; docs/precision.md.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class Agreement:
    """Running tallies over batches; ``report()`` gives the figures."""

    tokens: int = 0  # teacher-forced caption positions compared
    tokens_same: int = 0  # of them, where the two top-1 tokens agree
    captions: int = 0
    captions_same: int = 0
    image_cos: list = field(default_factory=list)
    text_cos: list = field(default_factory=list)
    top1_prob: list = field(default_factory=list)  # float32's probability of its own top-1, per position
    examples: list = field(default_factory=list)  # (fp32 caption, reduced caption) of the first differing ones

    @torch.inference_mode()
    def add(self, reference, candidate, images: list) -> None:
        """Compare ``candidate`` (a ``vlm.api.Pipeline`` at reduced precision) with ``reference``
        (the same model in float32) on a list of loaded PIL images."""
        x_ref, x_low = reference._tensor(images), candidate._tensor(images)
        img_ref = reference.model.encode_image(x_ref).float()
        img_low = candidate.model.encode_image(x_low).float()
        self.image_cos += torch.nn.functional.cosine_similarity(img_ref, img_low, dim=-1).tolist()
        if not reference.can_caption:
            return
        from vlm.generation.decode import caption_ids

        cfg = reference.generation_config()
        ids_ref = caption_ids(reference.model, x_ref, reference.tokenizer, cfg, lexicon=reference.lexicon)
        ids_low = caption_ids(candidate.model, x_low, candidate.tokenizer, cfg, lexicon=candidate.lexicon)
        tok = reference.tokenizer
        for a, b in zip(ids_ref, ids_low):
            cap_a, cap_b = tok.decode(a).strip(), tok.decode(b).strip()
            self.captions += 1
            self.captions_same += cap_a == cap_b
            if cap_a != cap_b and len(self.examples) < 5:
                self.examples.append((cap_a, cap_b))
        text = _teacher_text(ids_ref, tok, reference.model.cfg.text.context_length, x_ref.device)  # (B, L)
        out_ref = reference.model(x_ref, text)
        out_low = candidate.model(x_low, text)
        keep = out_ref.caption_labels != _pad_id(tok)  # (B, L-1): each caption token and the end token
        top_ref = out_ref.caption_logits.float().argmax(-1)[keep]
        top_low = out_low.caption_logits.float().argmax(-1)[keep]
        self.tokens += int(keep.sum())
        self.tokens_same += int((top_ref == top_low).sum())
        self.top1_prob += out_ref.caption_logits.float().softmax(-1).amax(-1)[keep].tolist()
        self.text_cos += torch.nn.functional.cosine_similarity(
            out_ref.text_embeds.float(), out_low.text_embeds.float(), dim=-1).tolist()

    def report(self) -> dict:
        def share(n: int, d: int) -> Optional[float]:
            return n / d if d else None

        def cos(values: list) -> Optional[dict]:
            return {"mean": statistics.fmean(values), "min": min(values)} if values else None

        return {
            "images": len(self.image_cos),
            "next_token_agreement": share(self.tokens_same, self.tokens), "tokens": self.tokens,
            "identical_captions": share(self.captions_same, self.captions), "captions": self.captions,
            "image_cosine": cos(self.image_cos), "text_cosine": cos(self.text_cos),
            "reference_top1_probability": statistics.median(self.top1_prob) if self.top1_prob else None,
            "differing_captions": [{"fp32": a, "reduced": b} for a, b in self.examples],
        }


def _pad_id(tokenizer) -> int:
    from vlm.generation.config import SpecialTokens

    return SpecialTokens.of(tokenizer).pad


def _teacher_text(ids: list, tokenizer, context_length: int, device) -> torch.Tensor:
    """(B, context_length) start + caption ids + end, padded: the float32 captions as model input."""
    from vlm.generation.config import SpecialTokens

    sp = SpecialTokens.of(tokenizer)
    text = torch.full((len(ids), context_length), sp.pad, dtype=torch.long)
    for i, row in enumerate(ids):
        seq = ([sp.sot] + list(row) + [sp.eot])[:context_length]
        text[i, : len(seq)] = torch.tensor(seq)
    return text.to(device)
