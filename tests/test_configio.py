"""The one config loader (vlm.io.configio) and the config seams built on it: checkpoint config.json
errors naming file and key, checkpoint metadata, the tokenizer authority, settings init_from
cannot apply, image size, and create_model(init=False) without process-global patches."""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
import torch

from tests.conftest import run_vlm
from vlm.io import configio
from vlm.io.checkpoint import load_checkpoint, read_config, save_pretrained
from vlm.model.config import ModelConfig, PreprocessConfig, check_image_size, get_config
from vlm.errors import CheckpointError
from vlm.model.coca import create_model
from vlm.training.config import load_train_config

ROOT = Path(__file__).resolve().parents[1]
MICRO = str(ROOT / "configs" / "micro.yaml")


@dataclass
class Inner:
    width: int = 4
    ratio: float = 1.0


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    maybe: Optional[int] = None
    tags: list[str] = field(default_factory=list)
    pair: tuple[float, ...] = (0.1, 0.2)
    flag: bool = False


def test_loader_converts_by_type_hints_and_names_file_and_key():
    cfg = configio.from_dict(Outer, {"inner": {"width": 8.0, "ratio": "3e-4"}, "maybe": None, "tags": "a",
                                     "pair": [1, 2], "flag": True}, "f.yaml")
    assert cfg.inner == Inner(8, 3e-4) and cfg.tags == ["a"] and cfg.pair == (1.0, 2.0) and cfg.flag is True
    cases = [({"inner": {"width": "abc"}}, "f.yaml: inner.width='abc': expected a whole number"),
             ({"inner": {"width": 2.5}}, "f.yaml: inner.width=2.5: expected a whole number"),
             ({"inner": [1, 2]}, "f.yaml: inner=[1, 2]: expected a section"),
             ({"inner": {"widht": 3}}, "f.yaml: unknown key inner.widht (did you mean width?)"),
             ({"flag": 1}, "f.yaml: flag=1: expected true or false"),
             ({"maybe": True}, "f.yaml: maybe=True: expected a whole number"),
             ({"pair": ["a", 1]}, "f.yaml: pair[0]='a': expected a number"),
             ({"name": 3}, "f.yaml: name=3: expected a string")]
    for raw, message in cases:
        with pytest.raises(configio.ConfigError) as e:
            configio.from_dict(Outer, raw, "f.yaml")
        assert str(e.value).startswith(message), (raw, str(e.value))


def test_dotted_overrides_merge_section_by_section():
    tree = configio.dotted_overrides(["inner.width=16", "tags=[a, b]", "maybe=null"])
    assert tree == {"inner": {"width": 16}, "tags": ["a", "b"], "maybe": None}
    merged = configio.merge({"inner": {"width": 4, "ratio": 2.0}, "name": "y"}, tree)
    assert configio.from_dict(Outer, merged, "o").inner == Inner(16, 2.0)
    with pytest.raises(configio.ConfigError, match="expected key=value"):
        configio.dotted_overrides(["inner.width"])


@pytest.mark.parametrize("override, message", [
    ("data.bogus=1", "override data.bogus=1: unknown key data.bogus (known: kind,"),
    ("steps=abc", "override steps=abc: steps='abc': expected a whole number"),
    ("model.vision.bogus=2", "override model.vision.bogus=2: unknown key model.vision.bogus (known: image_size,"),
    ("image_size=big", "override image_size=big: model.vision.image_size='big': expected a whole number"),
    ("steps=0", "override steps=0: steps=0: must be at least 1"),  # a range check of one field, too
    ("data.batch_size=0", "override data.batch_size=0: data.batch_size=0: must be at least 1"),
])
def test_a_bad_override_is_named_as_the_override_not_the_file(override, message):
    with pytest.raises(configio.ConfigError) as e:
        load_train_config(MICRO, [override])
    assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize("content, reason", [
    (None, "no such file"),
    ("steps: [1\n", "not valid YAML"),
    ("- steps\n", "must be a mapping of keys to values"),
    ("bogus: 1\n", "unknown key bogus"),
    ("steps: 0\n", "steps=0: must be at least 1"),
])
def test_a_config_file_error_names_the_path_in_python_and_the_flag_on_the_command_line(
        tmp_path, capsys, content, reason):
    from vlm.training.cli import main

    path = tmp_path / "recipe.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises((FileNotFoundError, configio.ConfigError)) as e:
        load_train_config(str(path))
    assert str(e.value).startswith(f"{path}: {reason}"), str(e.value)  # the API never quotes a CLI flag
    assert isinstance(e.value, FileNotFoundError) == (content is None)
    assert main(["--config", str(path)]) == 2  # scripts/train.py and `vlm train`: the flag the user typed
    err = capsys.readouterr().err
    assert err.startswith(f"train.py: error: --config {path}: {reason}") and len(err.splitlines()) == 1, err


def test_generation_config_loads_through_the_same_loader():
    from vlm.generation.config import GenerationConfig

    cfg = configio.from_dict(GenerationConfig, {"max_tokens": 12, "top_p": "0.9", "seed": None}, "gen.yaml")
    assert cfg.max_tokens == 12 and cfg.top_p == 0.9
    with pytest.raises(configio.ConfigError, match="gen.yaml: beams='two': expected a whole number"):
        configio.from_dict(GenerationConfig, {"beams": "two"}, "gen.yaml")


# ----------------------------------------------------------------------------- checkpoint config.json


def _damaged(tiny_checkpoint, tmp_path, edit) -> Path:
    d = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, d)
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("edit, words", [
    (lambda c: c["vision"].update(width="wide"), "vision.width='wide': expected a whole number"),
    (lambda c: c["text"].update(layers=1.5), "text.layers=1.5: expected a whole number"),
    (lambda c: c.update(vision=[32, 8]), "vision=[32, 8]: expected a section"),
    (lambda c: c["decoder"].update(heads=-2), "decoder.heads=-2: must be at least 1"),
    (lambda c: c["vision"].update(heads=5), "vision.width=32: must be divisible by vision.heads=5"),
    (lambda c: c.update(colour="red"), "unknown key colour"),
])
def test_bad_checkpoint_config_is_one_line_naming_file_and_key(tiny_checkpoint, sample_images, tmp_path,
                                                                edit, words):
    d = _damaged(tiny_checkpoint, tmp_path, edit)
    with pytest.raises(CheckpointError) as e:
        read_config(d)
    assert str(e.value).startswith(f"{d / 'config.json'}: ") and words in str(e.value), str(e.value)
    proc = run_vlm("caption", sample_images["good"], "--model", str(d))
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(d / "config.json") in err[0] and words in err[0], err


def test_metadata_has_its_own_key_and_old_checkpoints_still_load(tiny_checkpoint, tmp_path):
    model = create_model("tiny")
    out = save_pretrained(model, tmp_path / "new", extra={"zero_shot_templates": ["one {}"],
                                                          "converted_from": "somewhere"})
    raw = json.loads((out / "config.json").read_text())
    assert raw["metadata"] == {"zero_shot_templates": ["one {}"], "converted_from": "somewhere"}
    assert "zero_shot_templates" not in raw and "image_size" not in raw["preprocess"]
    cfg, meta = read_config(out)
    assert cfg == model.cfg and meta.zero_shot_templates == ["one {}"] and meta.converted_from == "somewhere"
    # the layout before the metadata key: templates at the top level
    old = _damaged(tiny_checkpoint, tmp_path, lambda c: c.update(zero_shot_templates=["a {} here"]))
    assert "metadata" not in json.loads((old / "config.json").read_text())
    ckpt = load_checkpoint(old)
    assert ckpt.meta.zero_shot_templates == ["a {} here"]
    import vlm

    assert vlm.load(str(old), device="cpu").templates == ("a {} here",)
    assert vlm.load(device="cpu").templates == ("one {}", "a picture of one {}")  # the shipped default
    with pytest.raises(configio.ConfigError, match="unknown key class_names"):
        save_pretrained(model, tmp_path / "bad", extra={"class_names": ["a"]})


# ----------------------------------------------------------------------------- tokenizer diagnosis


def test_missing_spm_model_is_named(tmp_path, sample_images):
    import vlm

    d = tmp_path / "spm"
    shutil.copytree(vlm.api.PRETRAINED_DIR / "default", d)
    (d / "spm.model").unlink()
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(d)
    assert "spm.model: no such file" in str(e.value) and "tokenizer_config.json names" in str(e.value)
    proc = run_vlm("caption", sample_images["good"], "--model", str(d))
    assert proc.returncode == 2 and "spm.model: no such file" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_clip_bpe_without_files_does_not_fall_back_into_an_index_error(tmp_path, sample_images):
    import vlm

    d = tmp_path / "nofiles"
    shutil.copytree(vlm.api.PRETRAINED_DIR / "default", d)
    for name in ("spm.model", "tokenizer_config.json"):
        (d / name).unlink()
    cfg = json.loads((d / "config.json").read_text())
    cfg["tokenizer"] = "clip_bpe"
    (d / "config.json").write_text(json.dumps(cfg))
    proc = run_vlm("caption", sample_images["good"], "--model", str(d))
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "IndexError" not in proc.stderr, proc.stderr
    assert "no tokenizer files" in err[0] and "does not fit the model's 128 tokens" in err[0], err


# ----------------------------------------------------------------------------- training config seams


def test_the_model_config_is_the_one_tokenizer_authority():
    from vlm.training.config import model_config

    cfg = load_train_config(MICRO)
    assert model_config(cfg).tokenizer == "sentencepiece"  # tiny says clip_bpe; micro.yaml trains SentencePiece
    assert model_config(load_train_config(MICRO, ["tokenizer=clip_bpe"])).tokenizer == "clip_bpe"
    with pytest.raises(ValueError, match="tokenizer='clip_bpe' and model.tokenizer='sentencepiece' disagree"):
        load_train_config(None, ["tokenizer=clip_bpe", "model.tokenizer=sentencepiece"])
    with pytest.raises(ValueError, match="model.tokenizer='wordpiece': must be one of clip_bpe, sentencepiece"):
        load_train_config(MICRO, ["tokenizer=wordpiece"])


def test_micro_export_records_sentencepiece(shapes_dir, tmp_path):
    from vlm.training import train

    train(load_train_config(MICRO, [f"data.root={shapes_dir}", f"output_dir={tmp_path}", "steps=1"]))
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["tokenizer"] == "sentencepiece"
    assert json.loads((tmp_path / "model" / "tokenizer_config.json").read_text())["type"] == "sentencepiece"


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    from vlm.data.shapes_dir import generate_shapes

    return generate_shapes(tmp_path_factory.mktemp("shapes") / "s", 24, seed=3)


@pytest.mark.parametrize("overrides, words", [
    (["model.vision.width=64"], "model.vision.width=64: cannot apply with init_from="),
    (["model=coca_ViT-B-32"], "model=coca_ViT-B-32: cannot apply with init_from="),
    (["tokenizer=sentencepiece"], "model.tokenizer='sentencepiece': cannot apply with init_from="),
])
def test_settings_init_from_cannot_apply_are_refused(tiny_checkpoint, overrides, words):
    from vlm.training.model_setup import build_model

    cfg = load_train_config(None, [f"init_from={tiny_checkpoint}", *overrides])
    with pytest.raises(ValueError) as e:
        build_model(cfg)
    assert words in str(e.value) and "\n" not in str(e.value), str(e.value)
    # what agrees with the checkpoint, and the image size, apply
    model, _ = build_model(load_train_config(None, [f"init_from={tiny_checkpoint}", "model=tiny",
                                                    "model.vision.width=32", "image_size=48"]))
    assert model.cfg.vision.image_size == 48 and model.visual.pos_embed.shape[0] == 1 + 6 * 6


def test_unknown_architecture_is_one_line_at_load():
    with pytest.raises(ValueError, match=r"model='nope': no such architecture \(known: "):
        load_train_config(MICRO, ["model=nope"])


# ----------------------------------------------------------------------------- image size, preprocessing


def test_image_size_rule_lives_in_one_function_and_set_image_size_does_not_mutate_shared_configs():
    for good in (8, 16, (16, 24)):
        check_image_size(good, 8)
    for bad in (0, -8, 4, 12, (16, 20), True):
        with pytest.raises(ValueError, match="multiple of the patch size 8"):
            check_image_size(bad, 8)
    cfg = get_config("tiny")
    model = create_model(cfg)
    model.set_image_size(48)
    assert cfg.vision.image_size == 32  # the config the model was built from is untouched
    assert model.cfg.vision.image_size == 48 and model.visual.cfg is model.cfg.vision
    pre = PreprocessConfig.for_model(model.cfg)
    assert pre.image_size == 48 and model.cfg.preprocess.image_size is None
    with pytest.raises(ValueError, match="preprocess.image_size: leave it out"):
        ModelConfig.from_dict({**cfg.to_dict(), "preprocess": {"image_size": 64}})


def test_create_model_without_init_patches_nothing_process_wide():
    originals = {cls: cls.reset_parameters for cls in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding,
                                                       torch.nn.LayerNorm)}
    inside, release = threading.Event(), threading.Event()

    def hold_the_skip_scope_open():
        from vlm.model.coca import _SkipInit

        with _SkipInit():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=hold_the_skip_scope_open)
    t.start()
    assert inside.wait(10)
    torch.manual_seed(0)
    other = torch.nn.Linear(64, 64)  # on this thread, while the other is inside the skip scope
    release.set()
    t.join(10)
    bound = 1 / 8
    assert other.weight.abs().max() <= bound and other.weight.std() > bound / 3  # kaiming-uniform init ran
    assert {cls: cls.reset_parameters for cls in originals} == originals
    m = create_model("tiny", init=False)
    assert m.cfg == get_config("tiny") and {cls: cls.reset_parameters for cls in originals} == originals
