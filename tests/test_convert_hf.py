"""Hugging Face CLIPModel directory -> vlm is exact: image/text features equal transformers'
``get_image_features`` / ``get_text_features``; the tokenizer and image preprocessing follow
the directory's files; bad directories fail in one line.

The directory is real: ``transformers.CLIPModel(CLIPConfig(...))`` at tiny width with random
non-degenerate weights, written by ``save_pretrained``, plus ``vocab.json``/``merges.txt`` built
from CLIP's BPE and a ``CLIPImageProcessor`` config, as on the Hub.
"""

from __future__ import annotations

import gzip
import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")

from conftest import run_vlm  # noqa: E402

from vlm.convert.hf import convert_hf_dir
from vlm.convert.hf_files import preprocess_from_hf  # noqa: E402
from parity_weights import randomize_  # noqa: E402
from vlm.errors import CheckpointError, ModelError  # noqa: E402

TOL = 1e-4
TEXTS = ["a photo of a cat", "two dogs playing in the snow next to a red car", "", "A Man, A Plan: Panama!",
         "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e 42", "a " * 60]


def write_clip_tokenizer_files(directory) -> None:
    """vocab.json + merges.txt in CLIPTokenizer's format, built from CLIP's BPE merges (open_clip's file)."""
    from vlm.tokenizers.clip_bpe import CLIPBPETokenizer, find_clip_bpe_vocab

    tok = CLIPBPETokenizer()
    vocab = {piece: i for i, piece in enumerate(tok._id_to_piece)}
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    with gzip.open(find_clip_bpe_vocab(), "rt", encoding="utf-8") as fh:
        merges = fh.read().split("\n")[1 : 1 + 48894]
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def make_hf_dir(directory, act="quick_gelu", eos=49407, image_size=64, seed=0):
    text = dict(hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, hidden_act=act, eos_token_id=eos)
    vision = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3,
                  image_size=image_size, patch_size=16, hidden_act=act)
    torch.manual_seed(seed)
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                           projection_dim=24)).eval()
    randomize_(model, seed=seed)
    model.save_pretrained(directory)
    write_clip_tokenizer_files(directory)
    transformers.CLIPImageProcessor(size={"shortest_edge": image_size},
                                    crop_size={"height": image_size, "width": image_size}).save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf") / "clip"
    model = make_hf_dir(d)
    return d, model


def _features(out):
    return out.pooler_output if hasattr(out, "pooler_output") else out


def maxdiff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("act,eos", [("quick_gelu", 49407), ("gelu", 49407), ("quick_gelu", 2)])
def test_features_and_cosines_match_transformers(tmp_path, act, eos):
    hf = make_hf_dir(tmp_path / "m", act=act, eos=eos, seed=1)
    model, tok = convert_hf_dir(tmp_path / "m")
    hf_tok = transformers.CLIPTokenizer.from_pretrained(tmp_path / "m")
    enc = hf_tok(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ids = tok(TEXTS, context_length=77)
    assert torch.equal(enc.input_ids[ids != 0], ids[ids != 0])  # same ids; only the padding id differs
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hi = _features(hf.get_image_features(pixel_values=images))
        ht = _features(hf.get_text_features(input_ids=enc.input_ids, attention_mask=enc.attention_mask))
        vi, vt = model.encode_image(images, normalize=False), model.encode_text(ids, normalize=False)
        assert maxdiff(hi, vi) < TOL and maxdiff(ht, vt) < TOL
        cos_hf = torch.nn.functional.normalize(hi, dim=-1) @ torch.nn.functional.normalize(ht, dim=-1).t()
        cos = model.encode_image(images) @ model.encode_text(ids).t()
        assert maxdiff(cos_hf, cos) < TOL
        logits = hf(input_ids=enc.input_ids, attention_mask=enc.attention_mask, pixel_values=images).logits_per_image
        assert maxdiff(logits, model.logit_scale.exp() * cos) < 10 * TOL
        assert cos.std() > 0.05 and (vt @ vt.t()).shape == (len(TEXTS), len(TEXTS))


def test_preprocessing_follows_the_processor_config(hf_dir):
    from PIL import Image

    import vlm
    from vlm.api import Pipeline
    from vlm.io.images import PreprocessConfig

    d, _ = hf_dir
    model, _ = convert_hf_dir(d)
    spec = model.cfg.preprocess
    assert (spec.resize_mode, spec.interpolation, spec.crop_rounding) == ("shortest", "bicubic", "floor")
    pre = PreprocessConfig(image_size=64, mean=spec.mean, std=spec.std, resize_mode=spec.resize_mode,
                           interpolation=spec.interpolation, crop_rounding=spec.crop_rounding)
    pipe = Pipeline(model, None, pre, torch.device("cpu"))
    vlm_pipe = vlm.load(f"hf:{d}")  # the pipeline vlm.load builds from the directory
    processor = transformers.CLIPImageProcessorPil.from_pretrained(d)
    for size in [(300, 200), (64, 64), (97, 401), (640, 480), (67, 64), (64, 203)]:
        img = Image.effect_noise(size, 60).convert("RGB")
        ref = processor(img, return_tensors="pt").pixel_values[0]
        assert torch.equal(pipe.images_to_tensor([img])[0], ref), size
        assert torch.equal(vlm_pipe.images_to_tensor([img])[0], ref), size
    # a squash config, bilinear, custom mean/std
    pp = {"size": {"height": 64, "width": 64}, "do_center_crop": False, "resample": 2,
          "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}
    s = preprocess_from_hf(pp, 64)
    assert (s.resize_mode, s.interpolation, s.mean, s.std) == ("squash", "bilinear", (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(CheckpointError, match="resize to 256 then crop"):
        preprocess_from_hf({"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}}, 224)
    with pytest.raises(CheckpointError, match="model takes 224x224"):
        preprocess_from_hf({"size": {"shortest_edge": 336}, "crop_size": 336}, 224)


def test_cli_convert_hf_then_classify_similarity_no_caption(hf_dir, tmp_path, sample_images, capsys):
    from vlm.cli.main import main as vlm_main

    d, hf = hf_dir
    img = sample_images["good"]
    r = run_vlm("convert", "hf", d, "--out", tmp_path / "out")  # the real command
    assert r.returncode == 0, r.stderr
    assert "no caption decoder" in r.stdout
    r = run_vlm("caption", img, "--model", tmp_path / "out")
    assert r.returncode == 2 and "no caption decoder" in r.stderr and "Traceback" not in r.stderr
    for model in (tmp_path / "out", f"hf:{d}"):  # the same entry point in-process (faster)
        assert vlm_main(["classify", str(img), "--model", str(model), "--labels", "cat,dog", "--json"]) == 0
        top = json.loads(capsys.readouterr().out.splitlines()[0])["top"]
        assert {t["label"] for t in top} == {"cat", "dog"} and abs(sum(t["prob"] for t in top) - 1) < 1e-4

    import vlm

    pipe = vlm.load(str(tmp_path / "out"))
    sims = pipe.similarity([img], ["a cat", "a dog"])
    x = transformers.CLIPImageProcessorPil.from_pretrained(d)(
        __import__("PIL.Image", fromlist=["open"]).open(img).convert("RGB"), return_tensors="pt").pixel_values
    enc = transformers.CLIPTokenizer.from_pretrained(d)(["a cat", "a dog"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = hf(input_ids=enc.input_ids, attention_mask=enc.attention_mask, pixel_values=x).logits_per_image
    assert maxdiff(sims * pipe.model.logit_scale.exp(), ref) < 10 * TOL


def test_bad_directories_fail_with_one_clear_message(hf_dir, tmp_path):
    d, _ = hf_dir
    with pytest.raises(CheckpointError, match="no config.json"):
        convert_hf_dir(tmp_path)
    bad = tmp_path / "trunc"
    shutil.copytree(d, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="unreadable safetensors file, truncated or corrupt"):
        convert_hf_dir(bad)
    r = run_vlm("convert", "hf", bad, "--out", tmp_path / "o")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "truncated" in r.stderr
    merges = tmp_path / "merges"
    shutil.copytree(d, merges)
    lines = (merges / "merges.txt").read_text().split("\n")
    lines[5], lines[6] = lines[6], lines[5]
    (merges / "merges.txt").write_text("\n".join(lines))
    with pytest.raises(CheckpointError, match="BPE merges differ from CLIP's"):
        convert_hf_dir(merges)
    wrong = tmp_path / "wrong"
    shutil.copytree(d, wrong)
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["vision_config"]["num_hidden_layers"] = 3
    (wrong / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="weights do not match the architecture: 1.* missing"):
        convert_hf_dir(wrong)


def test_offline_hub_id_fails_fast_with_what_to_download(tmp_path, sample_images):
    from vlm.convert.remote import load_remote

    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = run_vlm("similarity", "--images", sample_images["good"], "--texts", "a", "--model",
                "hf:openai/clip-vit-base-patch32", env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert "hf:openai/clip-vit-base-patch32: could not download (offline?)" in r.stderr
    assert "https://huggingface.co/openai/clip-vit-base-patch32" in r.stderr and "hf:/path/to/dir" in r.stderr
    with pytest.raises(ModelError, match="no such directory"):
        load_remote(f"hf:{tmp_path}/nothing/here")
