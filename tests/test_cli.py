"""The `vlm` command as a real subprocess: every command, every bad-input case.

Bad input must give one clear line naming the input and the reason, exit 1 when
some inputs failed (the good ones still processed), exit 2 for usage or model
errors, and never a traceback. The bad-input, bad-checkpoint and usage-error cases run in a fresh
interpreter (``fresh=True``); the others in a child forked from a warm one (conftest.run_vlm).
"""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from conftest import run_vlm

BAD = {  # input -> words the one-line reason must contain
    "missing": "no such file",
    "noimages": "no images",
    "empty": "empty",
    "truncated": "truncated",
    "notimage": "not an image",
    "bomb": "decompression-bomb",
}


def _no_traceback(proc):
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


def _json_lines(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_caption_good_images_text_and_json(tiny_checkpoint, sample_images):
    proc = run_vlm("caption", sample_images["good_dir"], "--model", tiny_checkpoint, "--max-tokens", "5")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and all(": " in line for line in lines)
    proc = run_vlm("caption", sample_images["good"], "--model", tiny_checkpoint, "--json", "--beams", "2",
                   "--max-tokens", "4")
    assert proc.returncode == 0, proc.stderr
    (obj,) = _json_lines(proc.stdout)
    assert obj["image"] == str(sample_images["good"]) and isinstance(obj["caption"], str)
    proc = run_vlm("caption", sample_images["good"], "--model", tiny_checkpoint, "--top-p", "0.9",
                   "--seed", "0", "--max-tokens", "4", "--min-tokens", "4")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("command", ["caption", "classify"])
def test_bad_inputs_reported_and_good_ones_still_processed(command, tiny_checkpoint, sample_images):
    inputs = [sample_images["good"], *(sample_images[k] for k in BAD), sample_images["good_dir"]]
    extra = ["--labels", "cat,dog"] if command == "classify" else ["--max-tokens", "3"]
    proc = run_vlm(command, *inputs, "--model", tiny_checkpoint, "--json", *extra, fresh=True)  # a fresh process
    _no_traceback(proc)
    assert proc.returncode == 1, proc.stderr
    objs = _json_lines(proc.stdout)
    assert [o["image"] for o in objs][0] == str(sample_images["good"])
    good = [o for o in objs if "error" not in o]
    assert len(good) == 4  # the single good image and the 3 in the good directory
    errors = {o["image"]: o["error"] for o in objs if "error" in o}
    stderr_lines = proc.stderr.strip().splitlines()
    assert len(stderr_lines) == len(BAD)
    for key, words in BAD.items():
        src = str(sample_images[key])
        assert src in errors, f"{key} not reported"
        assert words in errors[src], errors[src]
        assert any(src in line and words in line for line in stderr_lines)


def test_classify_labels_file_templates_and_top_k(tiny_checkpoint, sample_images, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("red square\n\ngreen square\nblue square\n")
    proc = run_vlm("classify", sample_images["good_dir"], "--labels-file", labels, "--template", "a {}.",
                   "--template", "a photo of a {}.", "--top-k", "2", "--model", tiny_checkpoint, "--json")
    assert proc.returncode == 0, proc.stderr
    objs = _json_lines(proc.stdout)
    assert len(objs) == 3
    for o in objs:
        assert len(o["top"]) == 2
        assert {t["label"] for t in o["top"]} <= {"red square", "green square", "blue square"}
        assert o["top"][0]["prob"] >= o["top"][1]["prob"] > 0


@pytest.mark.parametrize("args, words", [
    (["--labels", " , ,"], "--labels: empty label list"),
    (["--labels-file", "EMPTY"], "empty label list"),
    (["--labels-file", "/nonexistent/labels.txt"], "no such file"),
    (["--labels", "cat", "--template", "no placeholder"], "must contain {}"),
])
def test_classify_usage_errors_exit_2(tiny_checkpoint, sample_images, tmp_path, args, words):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    args = [str(empty) if a == "EMPTY" else a for a in args]
    proc = run_vlm("classify", sample_images["good"], *args, "--model", tiny_checkpoint)
    _no_traceback(proc)
    assert proc.returncode == 2
    assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_similarity_json_and_plot(tiny_checkpoint, sample_images, tmp_path):
    plot = tmp_path / "sim.png"
    imgs = sorted(sample_images["good_dir"].iterdir())
    proc = run_vlm("similarity", "--images", *imgs, sample_images["truncated"], "--texts", "a red image",
                   "a blue image", "--model", tiny_checkpoint, "--json", "--plot", plot)
    _no_traceback(proc)
    assert proc.returncode == 1  # the truncated image failed, the others are in the matrix
    obj = json.loads(proc.stdout)
    assert obj["images"] == [str(p) for p in imgs] and obj["texts"] == ["a red image", "a blue image"]
    assert len(obj["cosine"]) == 3 and all(len(r) == 2 and all(-1 <= v <= 1 for v in r) for r in obj["cosine"])
    assert "truncated" in proc.stderr
    with Image.open(plot) as im:
        assert im.size[0] > 100 and im.size[1] > 100


@pytest.mark.parametrize("damage, words", [
    ("truncated", "unreadable weights"),
    ("mismatch", "do not match the architecture"),
    ("missing", "no such model or checkpoint"),
])
def test_bad_checkpoint_exit_2(tiny_checkpoint, sample_images, tmp_path, damage, words):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    if damage == "truncated":
        w = ckpt / "model.safetensors"
        w.write_bytes(w.read_bytes()[:3000])
    elif damage == "mismatch":
        cfg = json.loads((ckpt / "config.json").read_text())
        cfg["text"]["layers"] = 3
        (ckpt / "config.json").write_text(json.dumps(cfg))
    else:
        ckpt = tmp_path / "nothing-here"
    proc = run_vlm("caption", sample_images["good"], "--model", ckpt, fresh=True)
    _no_traceback(proc)
    assert proc.returncode == 2
    assert words in proc.stderr and str(ckpt) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_usage_errors_are_one_line(sample_images, tiny_checkpoint):
    for args in (["caption"], ["caption", sample_images["good"], "--beams", "x"], ["frobnicate"],
                 ["caption", sample_images["good"], "--model", tiny_checkpoint, "--beams", "0"]):
        proc = run_vlm(*args, fresh=True)
        _no_traceback(proc)
        assert proc.returncode == 2, args
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_models_lists_configs(tiny_checkpoint):
    proc = run_vlm("models", "--json")
    assert proc.returncode == 0
    names = {c["name"] for c in json.loads(proc.stdout)["configs"]}
    assert {"tiny", "coca_ViT-B-32", "coca_ViT-L-14", "ViT-B-32", "ViT-B-16", "ViT-L-14"} <= names


def test_a_command_in_a_process_group_destroys_it_before_shutdown(tmp_path, capsys):
    """A launched command (``accelerate launch ... -m vlm.cli.main index``) must not leave its gloo
    process group to interpreter shutdown, where gloo's threads can abort a finished run
    (vlm.runtime.process_group)."""
    import torch.distributed as dist

    from vlm.cli.main import run_command

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert run_command("models", []) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert "coca_ViT-B-32" in capsys.readouterr().out
