"""A run's life on disk: atomic checkpoints and exports, a log that reads like an uninterrupted
one after a resume, a reused output_dir refused, and what a killed writer leaves pruned.

Run: ``pytest tests/test_train_lifecycle.py -q``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import ForkServer, run_python
from vlm.data.shapes_dir import generate_shapes
from vlm.training import load_train_config, train

ROOT = Path(__file__).resolve().parents[1]
MICRO = str(ROOT / "configs" / "micro.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("shapes") / "train", 48, seed=5)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resumed_log_reads_like_an_uninterrupted_one(shapes, tmp_path):
    """Steps 5-8 were logged after the step-4 checkpoint; resuming from it logs them once."""
    out = tmp_path / "run"
    common = [f"data.root={shapes}", "steps=8", "save_every=4", "keep_checkpoints=3", f"output_dir={out}"]
    train(load_train_config(MICRO, common))
    first = records(out / "losses.jsonl")
    assert [r["step"] for r in first] == list(range(1, 9))
    train(load_train_config(MICRO, common + [f"resume={out / 'checkpoints' / 'step_0000004'}"]))
    again = records(out / "losses.jsonl")
    assert [r["step"] for r in again] == list(range(1, 9))  # 8 lines, not 12
    assert again[:4] == first[:4]
    assert torch.allclose(torch.tensor([r["total"] for r in again]), torch.tensor([r["total"] for r in first]),
                          rtol=1e-4, atol=1e-5)


def test_reused_output_dir_is_refused_and_left_as_it_was(shapes, tmp_path):
    out = tmp_path / "run"
    args = [str(ROOT / "scripts" / "train.py"), "--config", MICRO, f"data.root={shapes}", "steps=2", f"output_dir={out}"]
    run = lambda: run_python(args, env=ENV, cwd=ROOT, timeout=240, preload=ForkServer.TRAIN_PRELOAD)  # noqa: E731
    assert run().returncode == 0
    log = (out / "losses.jsonl").read_text()
    weights = (out / "model" / "model.safetensors").read_bytes()
    r = run()
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1] == (f"train.py: error: output_dir={out}: already holds a training run (losses.jsonl, "
                         f"checkpoints, model); continue it with resume=latest, or choose another output_dir") \
        or lines[-1].startswith(f"train.py: error: output_dir={out}: already holds a training run"), r.stderr
    assert "Traceback" not in r.stderr
    assert (out / "losses.jsonl").read_text() == log
    assert (out / "model" / "model.safetensors").read_bytes() == weights


def test_half_written_checkpoints_are_pruned_and_never_resumed(shapes, tmp_path):
    out = tmp_path / "run"
    common = [f"data.root={shapes}", "steps=6", "save_every=2", "keep_checkpoints=5", f"output_dir={out}"]
    train(load_train_config(MICRO, common + ["stop_after=4"]))
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000002", "step_0000004"]
    # what a kill -9 during the step-6 save leaves: the .partial dir, and (an older layout) a step
    # dir whose trainer_state.json was never written
    shutil.copytree(ckpts / "step_0000004", ckpts / "step_0000006.partial")
    shutil.copytree(ckpts / "step_0000004", ckpts / "step_0000008")
    (ckpts / "step_0000008" / "trainer_state.json").unlink()
    (out / "model.partial").mkdir()
    result = train(load_train_config(MICRO, common + ["resume=latest"]))
    assert result["finished"] and len(result["losses"]) == 2  # resumed at step 4, not 6 or 8
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000002", "step_0000004", "step_0000006"]
    assert not (out / "model.partial").exists()
    assert [r["step"] for r in records(out / "losses.jsonl")] == list(range(1, 7))


SAVER = textwrap.dedent("""
    import sys, torch
    from vlm.io.checkpoint import save_pretrained
    from vlm.model.coca import create_model
    sys.path.insert(0, {tests!r})
    from conftest import shrink
    from vlm.model.config import get_config
    model = create_model(shrink(get_config("tiny")))
    seed = 0
    print("ready", flush=True)
    while True:
        seed += 1
        torch.manual_seed(seed)
        for p in model.parameters():
            p.data.normal_()
        save_pretrained(model, sys.argv[1])
""")


@pytest.mark.slow
def test_save_pretrained_killed_at_any_moment_leaves_a_loadable_checkpoint(tmp_path):
    """kill -9 a process that saves in a loop: the directory always loads, whole."""
    from vlm.io.checkpoint import load_config, load_state_dict
    from vlm.model.coca import create_model

    target = tmp_path / "ckpt"
    script = tmp_path / "saver.py"
    script.write_text(SAVER.format(tests=str(ROOT / "tests")))
    for delay in (0.2, 0.45, 0.7, 0.95, 1.2):
        proc = subprocess.Popen([sys.executable, str(script), str(target)], cwd=ROOT, env=ENV,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        while not (target / "config.json").exists():  # the first save is complete
            time.sleep(0.01)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        model = create_model(load_config(target))
        model.load_state_dict(load_state_dict(target / "model.safetensors"))
        assert _seed_of(model) is not None, "the weights are not one save's: a mix of two"


def _seed_of(model, limit: int = 20000):
    """The seed whose normal draw gave every parameter (each save draws all of them from one seed)."""
    params = list(model.parameters())
    probe = torch.empty_like(params[0])
    for seed in range(1, limit):
        torch.manual_seed(seed)
        if torch.equal(probe.normal_(), params[0]):
            torch.manual_seed(seed)
            draws = [torch.empty_like(p).normal_() for p in params]
            return seed if all(torch.equal(d, p) for d, p in zip(draws, params)) else None
    return None


def test_a_save_that_fails_half_way_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    """The weights file dies half-written (disk full, a kill): the previous save still loads, unchanged."""
    import safetensors.torch

    from conftest import shrink
    from vlm.io.checkpoint import load_config, load_state_dict, save_pretrained
    from vlm.model.config import get_config
    from vlm.model.coca import create_model

    target = tmp_path / "ckpt"
    model = create_model(shrink(get_config("tiny")))
    save_pretrained(model, target)
    before = {name: p.read_bytes() for name, p in ((p.name, p) for p in target.iterdir())}
    real = safetensors.torch.save_file

    def dies_half_way(state, filename, metadata=None):
        real(state, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", dies_half_way)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with pytest.raises(OSError, match="No space left"):
        save_pretrained(model, target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert not (tmp_path / "ckpt.partial").exists()
    create_model(load_config(target)).load_state_dict(load_state_dict(target / "model.safetensors"))
