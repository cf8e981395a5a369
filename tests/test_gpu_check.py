"""scripts/gpu_check.py, the one-shot GPU check (issue 20), run end to end on the CPU with ``--tiny``,
so that it works the first time it meets a GPU; and its FLOP count, against torch's own counter."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
for var in ("ACCELERATE_USE_CPU", "ACCELERATE_USE_FSDP"):
    ENV.pop(var, None)


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_flops_formula_matches_torchs_flop_counter(gpu_check):
    from torch.utils.flop_counter import FlopCounterMode

    from vlm.model.coca import create_model
    from vlm.model.config import get_config
    from vlm.training.losses import CoCaLoss

    cfg = get_config("tiny")
    model = create_model(cfg)
    images, text = gpu_check.batch(torch, cfg, 4, torch.device("cpu"))
    with FlopCounterMode(display=False) as counter:  # matrix products, forward and backward
        CoCaLoss(pad_id=0)(model(images, text))["total"].backward()
    counted = counter.get_total_flops() / 4
    assert gpu_check.train_flops_per_sample(cfg, text.shape[1], 4) == pytest.approx(counted, rel=0.02)


def run(tmp_path, *args, env=None) -> dict:
    out = tmp_path / "check.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out), *args],
                       cwd=ROOT, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_every_section_runs_on_the_cpu(tmp_path):
    res = run(tmp_path)
    for name in ("train", "fsdp", "caption", "index"):
        assert "error" not in res[name] and "skipped" not in res[name], (name, res[name])
    train = res["train"]
    assert train["vlm"]["samples_per_s"] > 0 and train["flops_per_sample"] > 0
    assert train["vlm"]["mfu"] is None and res["peak_flops"] is None  # no peak assumed for a CPU
    if isinstance(train.get("open_clip"), dict):  # the same weights and batch: the same first loss (bf16)
        assert train["open_clip"]["samples_per_s"] > 0
        assert train["first_loss_abs_diff"] < 1e-2 * abs(train["vlm"]["first_loss"])
    else:
        assert train["open_clip"].startswith("not measured: ")
    fsdp = res["fsdp"]
    assert fsdp["ddp"]["exit"] == 0 and len(fsdp["ddp"]["losses"]) == fsdp["steps"], fsdp["ddp"]
    assert fsdp["ddp"]["launch"].startswith("2 processes, MULTI_CPU")
    if not torch.cuda.is_available():  # Accelerate 1.16: FSDP on GPUs only, refused in one line
        assert fsdp["fsdp"]["exit"] != 0 and "runs FSDP on GPUs only" in fsdp["fsdp"]["error"], fsdp["fsdp"]
    assert res["caption"]["vlm"]["tokens_per_s"] > 0
    assert isinstance(res["caption"]["open_clip"], (dict, str))  # measured, or why not
    assert res["index"]["images_per_s"] > 0 and res["index"]["report"]["count"] == res["index"]["images"]


@pytest.mark.slow
def test_missing_open_clip_is_reported_not_a_crash(tmp_path):
    # an interpreter where open_clip cannot be imported, as on a fresh GPU machine
    shadow = tmp_path / "shadow" / "open_clip"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named open_clip')\n")
    path = os.pathsep.join([str(shadow.parent), str(ROOT), ENV.get("PYTHONPATH", "")])
    res = run(tmp_path, "--sections", "train", "caption", env={"PYTHONPATH": path})
    assert res["environment"]["open_clip"].startswith("unavailable (ImportError")
    assert res["model"]["open_clip"].startswith("unavailable: ImportError")
    for name in ("train", "caption"):
        assert res[name]["open_clip"].startswith("not measured: ImportError"), res[name]
        assert "error" not in res[name]
    assert res["train"]["vlm"]["samples_per_s"] > 0 and res["caption"]["vlm"]["tokens_per_s"] > 0
