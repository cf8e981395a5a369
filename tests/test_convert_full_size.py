"""The real coca_ViT-B-32 (253M parameters, random non-degenerate weights) converted from open_clip:
image/text embeddings and caption logits within 1e-4 of open_clip's, greedy tokens identical.

The tiny-width layouts of every supported architecture are in tests/test_convert_open_clip.py;
this is the one check at full size (about 20 s on 2 cores).
"""

from __future__ import annotations

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from test_convert_open_clip import EOT, SOT, TOL, _open_clip_greedy, inputs, maxdiff  # noqa: E402

from vlm.convert.open_clip import arch_config, from_open_clip_model  # noqa: E402
from parity_weights import randomize_  # noqa: E402
from vlm.generation.config import GenerationConfig, SpecialTokens
from vlm.generation.decode import generate  # noqa: E402


@pytest.mark.slow
def test_full_size_coca_vit_b32_matches_open_clip():
    """The real coca_ViT-B-32 (253M parameters) with random weights: embeddings, logits, greedy tokens."""
    torch.manual_seed(0)
    oc = randomize_(open_clip.create_model("coca_ViT-B-32"), seed=0, logit_gain=4.0).eval()
    model = from_open_clip_model(oc, arch_config("coca_ViT-B-32"))
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    _, text = inputs(arch_config("coca_ViT-B-32"))
    text = text[:2]
    with torch.no_grad():
        ref = oc(images, text)
        out = model(images, text)
        assert maxdiff(ref["image_features"], out.image_embeds) < TOL
        assert maxdiff(ref["text_features"], out.text_embeds) < TOL
        assert maxdiff(ref["logits"], out.caption_logits) < TOL
        assert out.caption_logits.std() > 1.0
        assert _open_clip_greedy(oc, images, 6, allow_eot=False) == \
            generate(model, images, SpecialTokens(SOT, EOT, 0), GenerationConfig(max_tokens=6, min_tokens=6))
