"""FSDP training (``fsdp: true``, Accelerate's FSDP2 plugin, full shard): issue 20.

Accelerate 1.16 runs FSDP on GPUs only. On CPU processes it keeps plain DDP and drops the plugin
silently, and ``accelerate launch --use_fsdp`` stops with a traceback (``FSDP parameter
initialization with `sync_module_states=True` is not supported on cpu``). So here:

- on CPU (always run): every way of asking Accelerate for FSDP is refused in one line, exit 2,
  before a step is trained, instead of a DDP run that calls itself FSDP or a traceback;
- on 2 CPU processes through torch's own FSDP2 (``tests/fsdp_worker.py``): vlm's CoCa shards (its
  scalar ``logit_scale`` as a 1-element parameter), FSDP's losses equal DDP's, a sharded checkpoint
  resumes to the same next step, and the gathered weights load into a fresh model;
- on GPUs (run where CUDA is present, and by ``scripts/gpu_check.py``): FSDP gives DDP's losses
  step for step, an FSDP run stopped and resumed follows the same trajectory, and its export loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import free_port
from vlm.data.shapes_dir import generate_shapes

ROOT = Path(__file__).resolve().parents[1]
MICRO = str(ROOT / "configs" / "micro.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
for var in ("ACCELERATE_USE_CPU", "ACCELERATE_USE_FSDP", "VLM_DEBUG"):
    ENV.pop(var, None)
REFUSAL = "Accelerate {} runs FSDP on GPUs only (on CPU processes it would train with plain DDP)"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("shapes") / "train", 32, seed=5)


def vlm_train(*args, env=None, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlm.cli.main", "train", "--config", MICRO, *map(str, args)],
                          cwd=ROOT, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def errors(proc, prefix: str) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith(prefix)]


def refusal() -> str:
    import accelerate

    return REFUSAL.format(accelerate.__version__)


def cpu_only() -> bool:
    return not torch.cuda.is_available()


@pytest.mark.skipif(not cpu_only(), reason="the refusal is for CPU processes")
def test_use_fsdp_on_cpu_is_refused_before_launch(shapes, tmp_path):
    r = vlm_train(f"data.root={shapes}", f"output_dir={tmp_path}", "steps=2", "--use_fsdp", "--num_processes", "2")
    assert r.returncode == 2, r.stderr[-3000:]
    assert errors(r, "vlm train: error:") == [f"vlm train: error: --use_fsdp: {refusal()}: no GPU for it here"]
    assert "Traceback" not in r.stderr and not tmp_path.joinpath("losses.jsonl").exists()


@pytest.mark.slow
@pytest.mark.skipif(not cpu_only(), reason="the refusal is for CPU processes")
def test_fsdp_on_two_cpu_processes_is_one_line_not_a_silent_ddp_run(shapes, tmp_path):
    r = vlm_train(f"data.root={shapes}", f"output_dir={tmp_path / 'run'}", "steps=2", "data.batch_size=8",
                  "fsdp=true", "--cpu", "--num_processes", "2", "--main_process_port", free_port())
    assert r.returncode == 2, r.stderr[-3000:]
    assert errors(r, "vlm train: error:") == [
        f"vlm train: error: fsdp=true: {refusal()}; train on CPUs without FSDP (distributed type MULTI_CPU)"]
    assert "Traceback" not in r.stderr and not (tmp_path / "run" / "losses.jsonl").exists()


@pytest.mark.slow
@pytest.mark.skipif(not cpu_only(), reason="the refusal is for CPU processes")
def test_plain_accelerate_launch_use_fsdp_on_cpu_names_accelerates_error(shapes, tmp_path):
    # Accelerate's own FSDP plugin (from --use_fsdp) refuses the CPU with a RuntimeError: one line
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(ROOT / "scripts" / "train.py"), "--config", MICRO,
           f"data.root={shapes}", f"output_dir={tmp_path}", "steps=2"]
    r = subprocess.run(cmd, cwd=ROOT, env={**ENV, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode != 0
    assert errors(r, "train.py: error:") == [
        f"train.py: error: --use_fsdp: {refusal()}: FSDP parameter initialization with "
        f"`sync_module_states=True` is not supported on cpu."], r.stderr[-3000:]
    assert "[rank0]: Traceback" not in r.stderr


# ------------------------------------------------------------------------------------------ GPUs


def losses(path: Path) -> list[float]:
    rows = sorted(map(json.loads, path.read_text().splitlines()), key=lambda r: r["step"])
    return [r["total"] for r in rows]


@pytest.mark.slow
@pytest.mark.skipif(cpu_only(), reason="Accelerate 1.16 runs FSDP on GPUs only (see the module docstring)")
def test_fsdp_matches_ddp_resumes_exactly_and_exports(shapes, tmp_path):
    import vlm

    n = min(2, torch.cuda.device_count())
    # Accelerate refuses --multi_gpu for one process; one GPU's FSDP runs are launched with --use_fsdp
    common = [f"data.root={shapes}", "steps=6", "data.batch_size=4", "lr=3e-3", "--num_processes", n,
              *(["--multi_gpu"] if n > 1 else [])]
    one = [] if n > 1 else ["--use_fsdp"]
    runs = {"ddp": [], "fsdp": ["fsdp=true", *one], "part": ["fsdp=true", "stop_after=3", *one]}
    for name, extra in runs.items():
        r = vlm_train(*common, f"output_dir={tmp_path / name}", *extra, "--main_process_port", free_port())
        assert r.returncode == 0, r.stderr[-3000:]
        if name != "ddp":
            assert f"{n} process{'es' if n > 1 else ''}, FSDP, device cuda" in r.stdout, r.stdout[-2000:]
    r = vlm_train(*common, f"output_dir={tmp_path / 'part'}", "fsdp=true", "resume=latest", *one,
                  "--main_process_port", free_port())
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stderr[-3000:]
    ddp, fsdp, part = (losses(tmp_path / k / "losses.jsonl") for k in ("ddp", "fsdp", "part"))
    assert len(ddp) == len(fsdp) == len(part) == 6
    assert torch.allclose(torch.tensor(fsdp), torch.tensor(ddp), rtol=1e-4, atol=1e-5), (fsdp, ddp)
    assert torch.allclose(torch.tensor(part), torch.tensor(fsdp), rtol=1e-5, atol=1e-6), (part, fsdp)
    pipe = vlm.load(str(tmp_path / "fsdp" / "model"))  # the gathered export is a whole model
    ref = vlm.load(str(tmp_path / "ddp" / "model"))
    for (k, a), b in zip(pipe.model.state_dict().items(), ref.model.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5), k


def test_shard_units_are_the_block_classes_the_model_has():
    # Accelerate refuses a wrap class it cannot find: a CLIP has no CrossBlock, a CoCa has both
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from vlm.model.coca import create_model
    from vlm.training.fsdp import WRAP, fit_to, plugin

    for name, classes in (("tiny", ["Block", "CrossBlock"]), ("ViT-B-32", ["Block"])):
        state = SimpleNamespace(fsdp_plugin=plugin())
        acc = SimpleNamespace(distributed_type=DistributedType.FSDP, state=state)
        model = create_model(name, init=False) if name != "tiny" else create_model(name)
        fit_to(acc, model)
        assert state.fsdp_plugin.transformer_cls_names_to_wrap == classes
        assert state.fsdp_plugin.fsdp_version == 2 and state.fsdp_plugin.reshard_after_forward is True
    assert WRAP == ["Block", "CrossBlock"]


def test_every_process_builds_its_own_weights_even_under_launch_defaults(monkeypatch):
    # `accelerate launch --use_fsdp` sets FSDP_CPU_RAM_EFFICIENT_LOADING=true (rank 0 loads, the others
    # receive); Accelerate 1.15 then fails on the top-level logit_scale (seen on an H200): vlm's plugin
    # turns that loading off whatever the environment says
    from vlm.training.fsdp import plugin

    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    assert plugin().cpu_ram_efficient_loading is False


@pytest.mark.slow
def test_torch_fsdp2_on_two_cpu_processes_matches_ddp_resumes_and_exports(tmp_path):
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "fsdp_worker.py"), str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["shards"] == 2 and res["scalars"] == ["logit_scale"]
    ddp, fsdp = torch.tensor(res["losses"]["ddp"]), torch.tensor(res["losses"]["fsdp"])
    assert len(ddp) == 3 and torch.allclose(fsdp, ddp, rtol=1e-5, atol=1e-6), res["losses"]
    assert res["losses"]["resumed"][0] == pytest.approx(res["losses"]["fsdp"][-1], rel=1e-6, abs=1e-6)
    assert res["export_max_abs_diff"] < 1e-5 and res["logit_scale_shape"] == []  # a scalar again
