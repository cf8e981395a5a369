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
    res = run(tmp_path, "--profile")
    for name in ("train", "fsdp", "caption", "index"):
        assert "error" not in res[name] and "skipped" not in res[name], (name, res[name])
    train = res["train"]
    assert train["vlm"]["samples_per_s"] > 0 and train["flops_per_sample"] > 0
    assert train["vlm"]["mfu"] is None and res["peak_flops"] is None  # no peak assumed for a CPU
    prof = train["vlm"]["profile"]  # --profile: one profiled step, its ops by time and by input shape
    assert 0 < prof["device_busy_s"] and prof["top"] and prof["top_by_shape"][0]["shapes"].startswith("[[")
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


def test_a_launched_run_keeps_the_callers_python_path(gpu_check, tmp_path):
    # packages installed beside the repository (pip --target DIR, PYTHONPATH=DIR) must stay importable
    # in the launched training processes: the first GPU run lost them and both runs exited 1
    env = gpu_check.train_env({"PYTHONPATH": "/opt/site", "ACCELERATE_USE_FSDP": "true"}, tmp_path / "r", cpu=False)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/opt/site"]
    assert "ACCELERATE_USE_FSDP" not in env and "ACCELERATE_USE_CPU" not in env
    assert gpu_check.train_env({}, tmp_path / "r", cpu=True)["PYTHONPATH"] == str(ROOT)


def test_a_failed_run_is_reported_by_its_cause(gpu_check):
    traceback = "\n".join([
        "[rank0]: Traceback (most recent call last):",
        '[rank0]:   File "x.py", line 3, in <module>',
        "[rank0]: AttributeError: 'FSDPCoCa' object has no attribute 'get_parameter_or_buffer'",
        "[rank0]: During handling of the above exception, another exception occurred:",
        "[rank0]: ValueError: not enough values to unpack (expected 2, got 1)",
        "Traceback (most recent call last):",
        "subprocess.CalledProcessError: Command '[...]' returned non-zero exit status 1."])
    assert gpu_check.failure_line(traceback) == "ValueError: not enough values to unpack (expected 2, got 1)"
    said = "train.py: error: fsdp=true: Accelerate 1.16.0 runs FSDP on GPUs only\n" + traceback
    assert gpu_check.failure_line(said).startswith("train.py: error: fsdp=true")
    assert gpu_check.failure_line("killed") == "killed"
