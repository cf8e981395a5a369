"""open_clip -> vlm conversion is exact: embeddings, cosine matrices, caption logits, greedy tokens
and preprocessing agree with open_clip's own models; bad checkpoints and offline tags fail in one line.

Weights are random (``tests/parity_weights.py: randomize_``: non-degenerate embeddings and logits),
built by open_clip from its real configs shrunk to tiny widths (same layout: attentional
pooler, appended CLS with the legacy mask, decoder cross-attention); the full-size
coca_ViT-B-32 check is in tests/test_convert_full_size.py.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

from conftest import run_vlm  # noqa: E402

from vlm.convert.open_clip import (  # noqa: E402
    SUPPORTED_ARCHS,
    arch_config,
    config_from_open_clip,
    convert_file,
    from_open_clip_model,
)
from parity_weights import randomize_, shrink_open_clip_cfg  # noqa: E402
from vlm.errors import CheckpointError, ModelError  # noqa: E402
from vlm.generation.config import GenerationConfig, SpecialTokens
from vlm.generation.decode import generate  # noqa: E402

SOT, EOT = 49406, 49407
TOL = 1e-4
TEXTS = ["a photo of a cat", "two dogs playing in the snow next to a red car", "",
         "émoji 😀 and punctuation!!! ...", "a " * 60]


def tiny_cfg(arch: str) -> dict:
    """open_clip's real config of ``arch`` at tiny width and depth; every structural switch kept."""
    return shrink_open_clip_cfg(open_clip.get_model_config(arch))


def build(arch: str, quick_gelu: bool = False, seed: int = 0):
    """(open_clip model, converted vlm model, vlm config) with the same random weights."""
    cfg = tiny_cfg(arch)
    cfg["quick_gelu"] = quick_gelu
    cls = open_clip.CoCa if "multimodal_cfg" in cfg else open_clip.CLIP
    kwargs = {k: v for k, v in cfg.items() if k != "custom_text"}  # a factory switch, not a model argument
    oc = randomize_(cls(**kwargs), seed=seed, logit_gain=4.0).eval()
    vcfg = config_from_open_clip(cfg)
    return oc, from_open_clip_model(oc, vcfg), vcfg


def inputs(vcfg, n_images=3):
    from vlm.tokenizers.clip_bpe import CLIPBPETokenizer

    g = torch.Generator().manual_seed(1)
    images = torch.randn(n_images, 3, vcfg.vision.image_size, vcfg.vision.image_size, generator=g)
    text = CLIPBPETokenizer()(TEXTS, context_length=vcfg.text.context_length)
    return images, text


def maxdiff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


# ------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_shipped_configs_equal_open_clip_architectures(arch):
    ours = arch_config(arch).to_dict()
    theirs = config_from_open_clip(open_clip.get_model_config(arch)).to_dict()
    for d in (ours, theirs):
        d.pop("preprocess")
    assert ours == theirs
    quick = arch_config(arch + "-quickgelu")
    assert quick.vision.act == quick.text.act == "quick_gelu"


def test_unsupported_architectures_and_options_are_refused():
    with pytest.raises(ModelError, match="not supported; supported: coca_ViT-B-32"):
        arch_config("RN50")
    cfg = tiny_cfg("ViT-B-32")
    cfg["vision_cfg"]["ls_init_value"] = 1e-5
    with pytest.raises(ModelError, match="vision_cfg.ls_init_value"):
        config_from_open_clip(cfg)


# ------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("arch,quick", [(a, False) for a in SUPPORTED_ARCHS] + [("ViT-B-32", True)])
def test_embeddings_cosines_and_logits_match_open_clip(arch, quick):
    oc, model, vcfg = build(arch, quick)
    images, text = inputs(vcfg)
    with torch.no_grad():
        oi, ot = oc.encode_image(images, normalize=True), oc.encode_text(text, normalize=True)
        vi, vt = model.encode_image(images), model.encode_text(text)
        assert maxdiff(oi, vi) < TOL and maxdiff(ot, vt) < TOL
        assert maxdiff(oi @ ot.t(), vi @ vt.t()) < TOL
        assert maxdiff(oc.logit_scale.exp(), model.logit_scale.exp()) < TOL
        # non-degenerate witnesses: the embeddings differ between inputs
        assert (vi @ vi.t()).fill_diagonal_(0).abs().max() < 0.99
        assert (vt @ vt.t()).fill_diagonal_(0).abs().max() < 0.99
        if vcfg.model_type == "coca":
            ref = oc(images[:2], text[:2])
            out = model(images[:2], text[:2])
            assert maxdiff(ref["logits"], out.caption_logits) < TOL
            assert out.caption_logits.std() > 1.0
            assert maxdiff(ref["image_features"], out.image_embeds) < TOL


def _open_clip_greedy(oc, images, n, allow_eot: bool):
    """Greedy decoding that calls open_clip's own CoCa forward on the whole prefix each step."""
    ids = torch.full((images.shape[0], 1), SOT)
    latent, embs = oc._encode_image(images)
    done = torch.zeros(images.shape[0], dtype=torch.bool)
    for _ in range(n):
        logits = oc(images, ids, image_latent=latent, image_embs=embs, output_labels=False)["logits"][:, -1]
        if not allow_eot:
            logits[:, EOT] = float("-inf")
        nxt = logits.argmax(-1).masked_fill(done, 0)
        done |= nxt == EOT
        ids = torch.cat([ids, nxt[:, None]], 1)
    rows = []
    for r in ids[:, 1:].tolist():
        rows.append(r[: r.index(EOT)] if EOT in r else [t for t in r if t != 0])
    return rows


@pytest.mark.parametrize("arch", ["coca_ViT-B-32", "coca_ViT-L-14"])
def test_greedy_captions_identical_to_open_clip_forward_loop(arch):
    oc, model, vcfg = build(arch, seed=3)
    images = inputs(vcfg, n_images=4)[0]
    with torch.no_grad():
        ref = _open_clip_greedy(oc, images, 20, allow_eot=False)
        ours = generate(model, images, SpecialTokens(SOT, EOT, 0), GenerationConfig(max_tokens=20, min_tokens=20))
        assert ours == ref and all(len(r) == 20 for r in ours)
        assert len({t for r in ours for t in r}) > 10  # not one repeated token
        # with end-of-text allowed, rows stop where open_clip's loop stops
        oc.text_decoder.text_projection.data[:, EOT] += 3.0
        model.decoder.lm_head.weight.data[EOT] += 3.0
        ref = _open_clip_greedy(oc, images, 20, allow_eot=True)
        ours = generate(model, images, SpecialTokens(SOT, EOT, 0), GenerationConfig(max_tokens=20))
    assert ours == ref


# --------------------------------------------------------------------------- files / CLI


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """A tiny CoCa and CLIP as open_clip checkpoint files + their open_clip config JSONs."""
    d = tmp_path_factory.mktemp("oc")
    files = {}
    for arch in ("coca_ViT-B-32", "ViT-B-32"):
        oc, _, _ = build(arch, seed=5)
        torch.save(oc.state_dict(), d / f"{arch}.bin")
        (d / f"{arch}.json").write_text(json.dumps(tiny_cfg(arch)))
        files[arch] = (d / f"{arch}.bin", d / f"{arch}.json", oc)
    return files


def test_convert_file_roundtrip_matches_open_clip(tiny_files, tmp_path):
    from safetensors.torch import save_file

    from vlm.io.checkpoint import load_pretrained, save_pretrained

    path, cfg_json, oc = tiny_files["coca_ViT-B-32"]
    model, tok = convert_file(path, str(cfg_json))
    save_file({k: v.contiguous() for k, v in oc.state_dict().items()}, tmp_path / "w.safetensors")
    model_st, _ = convert_file(tmp_path / "w.safetensors", str(cfg_json))
    save_pretrained(model, tmp_path / "ckpt", tokenizer=tok)
    reloaded, tok2 = load_pretrained(tmp_path / "ckpt")
    images, text = inputs(model.cfg)
    with torch.no_grad():
        ref = oc.encode_image(images, normalize=True)
        for m in (model, model_st, reloaded):
            assert maxdiff(ref, m.encode_image(images)) < TOL
    assert tok2(TEXTS, 76).equal(tok(TEXTS, 76))


def test_bad_checkpoints_fail_with_one_clear_message(tiny_files, tmp_path):
    path, cfg_json, _ = tiny_files["coca_ViT-B-32"]
    data = path.read_bytes()
    (tmp_path / "trunc.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.bin: unreadable checkpoint: truncated or corrupt"):
        convert_file(tmp_path / "trunc.bin", str(cfg_json))
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        convert_file(tmp_path / "empty.bin", str(cfg_json))
    (tmp_path / "text.safetensors").write_text("not weights")
    with pytest.raises(CheckpointError, match="unreadable safetensors file"):
        convert_file(tmp_path / "text.safetensors", str(cfg_json))
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.bin")
    with pytest.raises(CheckpointError, match="refused for safety"):
        convert_file(tmp_path / "pickled.bin", str(cfg_json))
    # a CLIP checkpoint read as CoCa, and a tiny checkpoint read as the real architecture
    with pytest.raises(CheckpointError, match="weights do not match the architecture: .* missing"):
        convert_file(tiny_files["ViT-B-32"][0], str(cfg_json))
    with pytest.raises(CheckpointError, match=r"\(as coca ViT width 768, 12 layers, patch 32\): weights do not match"):
        convert_file(path, "coca_ViT-B-32")
    state = torch.load(path, weights_only=True)
    state["visual.positional_embedding"] = state["visual.positional_embedding"][:3]
    torch.save(state, tmp_path / "shape.bin")
    with pytest.raises(CheckpointError, match=r"visual.pos_embed has shape \(3, 48\), the model expects \(5, 48\)"):
        convert_file(tmp_path / "shape.bin", str(cfg_json))
    state = torch.load(path, weights_only=True)
    state["visual.extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "extra.bin")
    with pytest.raises(CheckpointError, match="1 unknown tensors \\(e.g. visual.extra.weight\\)"):
        convert_file(tmp_path / "extra.bin", str(cfg_json))

    r = run_vlm("convert", "open_clip", tmp_path / "trunc.bin", "--arch", cfg_json, "--out", tmp_path / "o")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "truncated or corrupt" in r.stderr
    assert not (tmp_path / "o").exists()


def test_cli_convert_then_classify_similarity_and_caption(tiny_files, tmp_path, sample_images, capsys):
    from vlm.cli.main import main as vlm_main

    coca_bin, coca_json, coca_oc = tiny_files["coca_ViT-B-32"]
    clip_bin, clip_json, clip_oc = tiny_files["ViT-B-32"]
    img = sample_images["good"]
    # the real command in a subprocess: convert, then caption with the converted checkpoint
    r = run_vlm("convert", "open_clip", coca_bin, "--arch", coca_json, "--out", tmp_path / "coca")
    assert r.returncode == 0, r.stderr
    assert "caption decoder" in r.stdout
    r = run_vlm("caption", img, "--model", tmp_path / "coca", "--max-tokens", "4", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["caption"]
    # the same entry point in-process (faster) for the CLIP checkpoint
    assert vlm_main(["convert", "open_clip", str(clip_bin), "--arch", str(clip_json), "--out",
                     str(tmp_path / "clip")]) == 0
    assert vlm_main(["convert", "open_clip", str(clip_bin), "--arch", str(clip_json), "--out",
                     str(tmp_path / "clip")]) == 2
    assert "--force" in capsys.readouterr().err  # never silently overwrites
    assert vlm_main(["classify", str(img), "--model", str(tmp_path / "clip"), "--labels", "cat,dog,car",
                     "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["top"]
    assert [t["label"] for t in top] and abs(sum(t["prob"] for t in top) - 1) < 1e-4
    assert vlm_main(["similarity", "--images", str(img), "--texts", "a cat", "a dog", "--model",
                     str(tmp_path / "clip")]) == 0
    assert vlm_main(["caption", str(img), "--model", str(tmp_path / "clip")]) == 2
    err = capsys.readouterr().err
    assert "no caption decoder" in err and err.count("\n") == 1
    # --model open_clip:CONFIG --pretrained FILE reads the file directly, same numbers as open_clip
    import vlm

    pipe = vlm.load(f"open_clip:{clip_json}@{clip_bin}")
    saved = vlm.load(str(tmp_path / "clip"))
    sims = pipe.similarity([img], ["a cat", "a dog"])
    assert maxdiff(sims, saved.similarity([img], ["a cat", "a dog"])) < TOL
    with torch.no_grad():
        x = pipe.images_to_tensor([img])
        ref = F.normalize(clip_oc.encode_image(x), dim=-1) @ F.normalize(
            clip_oc.encode_text(pipe.tokenizer(["a cat", "a dog"], 77)), dim=-1).t()
    assert maxdiff(sims, ref) < TOL


def test_preprocessing_follows_open_clip_tags(tmp_path):
    """Every pretrained tag's preprocessing is what open_clip's own transform does, to the bit;
    files take the architecture default, an open_clip_config.json beside them, or --tag."""
    from PIL import Image

    from vlm.api import Pipeline
    from vlm.convert.open_clip import tag_settings, tags_with_other_preprocessing
    from vlm.io.images import PreprocessConfig

    images = [Image.effect_noise(size, 60).convert("RGB") for size in [(300, 200), (224, 224), (97, 401)]]
    assert "laion2b_s32b_b82k" in tags_with_other_preprocessing("ViT-L-14")  # Inception mean/std
    assert tags_with_other_preprocessing("coca_ViT-B-32") == []
    for arch, tag in [("coca_ViT-B-32", "laion2b_s13b_b90k"), ("ViT-L-14", "laion2b_s32b_b82k"),
                      ("ViT-B-32", "openai")]:
        vlm_arch, spec, entry = tag_settings(arch, tag)
        assert vlm_arch == arch + ("-quickgelu" if tag == "openai" else "")
        size = arch_config(vlm_arch).vision.image_size
        oc_pre = open_clip.image_transform(size, is_train=False, mean=entry["mean"], std=entry["std"],
                                           resize_mode=entry["resize_mode"], interpolation=entry["interpolation"])
        pre = PreprocessConfig(image_size=size, mean=spec.mean, std=spec.std, resize_mode=spec.resize_mode,
                               interpolation=spec.interpolation)
        pipe = Pipeline(None, None, pre, torch.device("cpu"))
        for img in images:
            assert torch.equal(pipe.images_to_tensor([img])[0], oc_pre(img))
    # an open_clip_config.json next to a checkpoint file sets the preprocessing, as in a Hub download
    oc, _, _ = build("ViT-B-32", seed=2)
    torch.save(oc.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    cfg = tiny_cfg("ViT-B-32")
    (tmp_path / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": cfg, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                                              "resize_mode": "squash", "interpolation": "bilinear"}}))
    (tmp_path / "arch.json").write_text(json.dumps(cfg))
    model, _ = convert_file(tmp_path / "open_clip_pytorch_model.bin", str(tmp_path / "arch.json"))
    p = model.cfg.preprocess
    assert (p.mean, p.resize_mode, p.interpolation) == ((0.5, 0.5, 0.5), "squash", "bilinear")
    # a named architecture takes the activation from that config too (OpenAI weights: QuickGELU)
    real = open_clip.get_model_config("ViT-B-32")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {**real, "quick_gelu": True}}))
    state = {k: torch.zeros(v.shape) for k, v in open_clip.create_model("ViT-B-32").state_dict().items()}
    torch.save(state, tmp_path / "open_clip_pytorch_model.bin")
    model, _ = convert_file(tmp_path / "open_clip_pytorch_model.bin", "ViT-B-32")
    assert model.cfg.vision.act == model.cfg.text.act == "quick_gelu"


def test_offline_tags_fail_fast_with_what_to_download(tmp_path, sample_images, monkeypatch):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = run_vlm("caption", sample_images["good"], "--model", "open_clip:coca_ViT-B-32",
                "--pretrained", "laion2b_s13b_b90k", env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert "open_clip:coca_ViT-B-32@laion2b_s13b_b90k: could not download (offline?)" in r.stderr
    assert "https://huggingface.co/laion/CoCa-ViT-B-32-laion2B-s13B-b90k" in r.stderr
    assert "--model open_clip:coca_ViT-B-32 --pretrained /path/to/open_clip_pytorch_model.bin" in r.stderr
    assert "--tag laion2b_s13b_b90k" in r.stderr
    from vlm.convert.remote import load_remote

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ModelError, match="unknown pretrained tag 'no_such_tag' for ViT-B-32 \\(known: openai"):
        load_remote("open_clip:ViT-B-32@no_such_tag")
    with pytest.raises(ModelError, match="'RN50' is not supported; supported:"):
        load_remote("open_clip:RN50@openai")
    with pytest.raises(ModelError, match="no such file"):
        load_remote(f"open_clip:coca_ViT-B-32@{tmp_path / 'missing.bin'}")
    with pytest.raises(ModelError, match="which weights\\? give pretrained=TAG") as e:
        load_remote("open_clip:coca_ViT-B-32")
    assert "which weights? pass --pretrained TAG" in e.value.cli_message()
