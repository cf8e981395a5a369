"""``open_clip:ARCH@TAG_OR_FILE`` and ``hf:NAME_OR_DIR`` model names, for ``vlm.load`` and the CLI.

- ``open_clip:coca_ViT-B-32@laion2b_s13b_b90k``: a pretrained tag. A copy already
  in the Hugging Face cache is used as is; otherwise, when the Hub can be
  reached, ``open_clip.create_model_and_transforms(arch, pretrained=tag)``
  downloads it. ``open_clip:ARCH@/path/to/open_clip_pytorch_model.bin`` (or a
  directory holding one) reads a file you downloaded yourself.
- ``hf:openai/clip-vit-base-patch32`` (Hub id, downloaded through huggingface_hub)
  or ``hf:/path/to/dir`` (a transformers CLIPModel directory).

Offline (no route to the Hub, or ``HF_HUB_OFFLINE=1``) nothing waits on the
network: a one-line ModelError says which file to download and how to pass it.
The CLI passes ``--model open_clip:ARCH --pretrained X`` as ``load_remote("open_clip:ARCH", pretrained=X)``.

    >>> model, tokenizer, directory = load_remote("open_clip:ViT-B-32@/data/vit_b_32.bin")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from vlm.convert.hub import can_reach, hub_endpoint, short_hub_timeouts
from vlm.errors import ModelError, first_line, how_to_load

OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                   "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
HF_PATTERNS = ["config.json", "preprocessor_config.json", "vocab.json", "merges.txt", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json"]


def load_remote(name: str, pretrained: Optional[str] = None):
    """(model, tokenizer, checkpoint directory or None) for an ``open_clip:`` or ``hf:`` name;
    ``pretrained``: the weights of an ``open_clip:ARCH`` (tag or file), as ``open_clip:ARCH@X`` would."""
    if pretrained is not None and not name.startswith("open_clip:"):
        raise ModelError(f"{name}: pretrained weights ({pretrained}) go with an open_clip:ARCH model name")
    if name.startswith("open_clip:"):
        return load_open_clip(name[len("open_clip:"):], pretrained=pretrained)
    if name.startswith("hf:"):
        return load_hf(name[len("hf:"):])
    if name.startswith("timm:"):  # a supervised ViT classifier (vlm.convert.timm)
        from vlm.convert.timm import load_timm

        return load_timm(name[len("timm:"):]), None, None
    raise ModelError(f"{name}: not an open_clip:, hf: or timm: model name")


# ----------------------------------------------------------------------- open_clip


def _find_open_clip_file(directory: Path) -> Path:
    for name in OPEN_CLIP_FILES:
        if (directory / name).is_file():
            return directory / name
    found = sorted(p for ext in ("*.safetensors", "*.bin", "*.pt", "*.pth") for p in directory.glob(ext))
    if len(found) == 1:
        return found[0]
    raise ModelError(f"{directory}: expected one open_clip checkpoint file ({OPEN_CLIP_FILES[2]} or "
                     f"{OPEN_CLIP_FILES[0]}), found {len(found)}")


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or text.startswith("~") or \
        text.endswith((".bin", ".pt", ".pth", ".safetensors"))


def load_open_clip(spec: str, tag: Optional[str] = None, pretrained: Optional[str] = None):
    """``ARCH@TAG_OR_FILE`` (or ``ARCH`` with ``pretrained=TAG_OR_FILE``); ``tag`` names the
    pretrained tag a local file was downloaded for (its preprocessing and activation then apply)."""
    from vlm.convert import open_clip as oc

    arch, _, named = spec.partition("@")
    if pretrained is not None and named:
        raise ModelError(f"open_clip:{spec}: the name already says which weights; pretrained={pretrained!r} "
                         f"is one too many")
    pretrained = named if pretrained is None else pretrained
    name = f"open_clip:{arch}@{pretrained}" if pretrained else f"open_clip:{arch}"
    oc.arch_config(arch)  # an unsupported architecture or a bad config file -> ModelError
    if not pretrained:
        example, file = _example_tag(arch), "/path/to/open_clip_pytorch_model.bin"
        raise ModelError(f"{name}: which weights? give pretrained=TAG (e.g. {example}) or pretrained=\"{file}\" "
                         f"(or name them: open_clip:{arch}@TAG)",
                         cli=f"{name}: which weights? pass --pretrained TAG (e.g. {example}) or --pretrained {file}")
    path = Path(pretrained).expanduser()
    if path.exists():
        file = _find_open_clip_file(path) if path.is_dir() else path
        preprocess = None
        if tag:
            arch, preprocess, _ = oc.tag_settings(arch, tag)
        model, tok = oc.convert_file(file, arch, preprocess)
        return model, tok, None
    if _looks_like_path(pretrained):
        raise ModelError(f"{name}: no such file {pretrained}")
    return _load_open_clip_tag(arch, pretrained, name)


def _example_tag(arch: str) -> str:
    return "laion2b_s13b_b90k" if arch.startswith("coca_") else "laion2b_s34b_b79k"


def _load_open_clip_tag(arch: str, tag: str, name: str):
    """A pretrained tag: from the Hugging Face cache, else downloaded by open_clip when online."""
    short_hub_timeouts()
    from vlm.convert import open_clip as oc

    vlm_arch, preprocess, tag_cfg = oc.tag_settings(arch, tag)
    base, quick = oc.split_arch(vlm_arch)
    hub = tag_cfg.get("hf_hub", "")
    repo, filename = _split_hub(hub)
    cached = _cached_open_clip_file(repo, filename) if repo else None
    if cached is not None:
        model, tok = oc.convert_file(cached, vlm_arch, preprocess)
        return model, tok, None
    where = f"{hub_endpoint()}/{repo}" if repo else tag_cfg.get("url", "")
    files = f"{filename} and open_clip_config.json from {where}" if repo else where
    if not can_reach(where):
        api, cli = how_to_load(f"open_clip:{vlm_arch}", f"/path/to/{filename or 'checkpoint.pt'}")
        head = f"{name}: could not download (offline?); download {files} into a directory yourself and "
        raise ModelError(f"{head}load it with {api} (or that directory), or convert it once with "
                         f"`vlm convert open_clip`",
                         cli=f"{head}pass {cli} (or that directory), or run "
                             f"`vlm convert open_clip FILE --arch {arch} --tag {tag} --out DIR`")
    try:
        import open_clip

        oc_model, _, _ = open_clip.create_model_and_transforms(base, pretrained=tag, force_quick_gelu=quick)
    except Exception as e:  # network and hub failures come in many types
        msg = first_line(e)
        raise ModelError(f"{name}: could not download ({msg}); download {where} yourself and pass "
                         f"--pretrained /path/to/{filename or 'checkpoint.pt'}") from None
    pp = getattr(oc_model.visual, "preprocess_cfg", None) or tag_cfg
    cfg = oc.arch_config(vlm_arch, oc.preprocess_from_open_clip(pp))
    model = oc.from_open_clip_model(oc_model, cfg)
    from vlm.tokenizers.clip_bpe import CLIPBPETokenizer

    return model, CLIPBPETokenizer(context_length=cfg.text.context_length), None


def _split_hub(hub: str) -> tuple[str, str]:
    """'org/model/' -> ('org/model', 'open_clip_pytorch_model.bin'); 'org/model/file.pt' -> (..., 'file.pt')."""
    parts = hub.strip("/").split("/")
    if len(parts) < 2:
        return "", ""
    return "/".join(parts[:2]), "/".join(parts[2:]) or "open_clip_pytorch_model.bin"


def _cached_open_clip_file(repo: str, filename: str) -> Optional[Path]:
    """The checkpoint from the Hugging Face cache (safetensors preferred), without network access."""
    from huggingface_hub import try_to_load_from_cache

    candidates = [filename]
    if filename == "open_clip_pytorch_model.bin":
        candidates.insert(0, "open_clip_model.safetensors")
    elif filename.endswith((".bin", ".pth")):
        candidates.insert(0, filename[:-4] + ".safetensors")
    for fname in candidates:
        hit = try_to_load_from_cache(repo, fname)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


# --------------------------------------------------------------------- Hugging Face


def load_hf(spec: str):
    """A transformers CLIPModel: a local directory, else a Hub id (cache first, then download)."""
    from vlm.convert.hf import convert_hf_dir

    name = f"hf:{spec}"
    if not spec:
        raise ModelError("hf: give a Hub model id or a directory, e.g. hf:openai/clip-vit-base-patch32")
    path = Path(spec).expanduser()
    if path.is_dir():
        model, tok = convert_hf_dir(path)
        return model, tok, None
    if _looks_like_path(spec) and (spec.startswith((".", "/", "~")) or spec.count("/") != 1):
        raise ModelError(f"{name}: no such directory")
    directory = _hf_snapshot(spec, name)
    model, tok = convert_hf_dir(directory)
    return model, tok, None


def _hf_snapshot(repo: str, name: str) -> Path:
    short_hub_timeouts()
    from huggingface_hub import snapshot_download

    weights = [["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"],
               ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"]]
    for patterns in weights:  # the cache first, never touching the network
        try:
            d = Path(snapshot_download(repo, allow_patterns=HF_PATTERNS + patterns, local_files_only=True))
            if any((d / p).is_file() for p in patterns[:2]):
                return d
        except Exception:
            pass
    where = f"{hub_endpoint()}/{repo}"
    api, cli = how_to_load("hf:/path/to/dir")
    if not can_reach(hub_endpoint()):
        head = (f"{name}: could not download (offline?); download config.json, model.safetensors, vocab.json, "
                f"merges.txt and preprocessor_config.json from {where} into a directory and ")
        raise ModelError(f"{head}load it with {api}, or convert it once with `vlm convert hf`",
                         cli=f"{head}pass {cli}, or run `vlm convert hf DIR --out OUT`")
    last = ""
    for patterns in weights:
        try:
            d = Path(snapshot_download(repo, allow_patterns=HF_PATTERNS + patterns))
        except Exception as e:
            last = first_line(e)
            break
        if any((d / p).is_file() for p in patterns[:2]):
            return d
    head = f"{name}: could not download from {where}{f' ({last})' if last else ''}; download the model directory"
    raise ModelError(f"{head} yourself and load it with {api}", cli=f"{head} yourself and pass {cli}")
