"""Checkpoints: bit-exact save/load round trip, and clear errors for bad checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from vlm.io.checkpoint import load_pretrained, save_pretrained
from vlm.errors import CheckpointError
from vlm.model.coca import create_model

from conftest import perturb


def test_round_trip_is_bit_exact(tmp_path, tiny_checkpoint):
    model, tok = load_pretrained(tiny_checkpoint)
    save_pretrained(model, tmp_path / "again", tokenizer=tok)
    again, tok2 = load_pretrained(tmp_path / "again")
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert tok2("a red circle").tolist() == tok("a red circle").tolist()
    images = torch.randn(2, 3, 32, 32)
    text = tok(["a cat", "a dog"], context_length=32)
    with torch.no_grad():
        o1, o2 = model(images, text), again(images, text)
    assert torch.equal(o1.caption_logits, o2.caption_logits)


def test_float16_export_loads_as_float32(tmp_path):
    model = perturb(create_model("tiny"))
    save_pretrained(model, tmp_path / "half", dtype=torch.float16)
    loaded, _ = load_pretrained(tmp_path / "half")
    w = loaded.visual.patch_embed.weight
    assert w.dtype == torch.float32
    assert torch.equal(w, model.visual.patch_embed.weight.detach().half().float())


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage, reason", [
    ("truncate", "unreadable weights"),
    ("garbage", "unreadable weights"),
    ("no_weights", "no model.safetensors"),
    ("no_config", "not a vlm checkpoint"),
    ("bad_json", "unreadable config"),
    ("wrong_arch", "do not match the architecture"),
])
def test_bad_checkpoints_raise_clear_errors(tmp_path, tiny_checkpoint, damage, reason):
    d = _copy(tiny_checkpoint, tmp_path / damage)
    weights = d / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:5000])
    elif damage == "garbage":
        weights.write_bytes(b"\x00" * 64)
    elif damage == "no_weights":
        weights.unlink()
    elif damage == "no_config":
        (d / "config.json").unlink()
    elif damage == "bad_json":
        (d / "config.json").write_text("{not json")
    elif damage == "wrong_arch":
        cfg = json.loads((d / "config.json").read_text())
        cfg["vision"]["width"] = 48
        (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        load_pretrained(d)
    msg = str(e.value)
    assert reason in msg and str(d) in msg and "\n" not in msg
