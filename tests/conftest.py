"""Shared fixtures: tiny models at the real layouts, a tiny checkpoint on disk, sample images."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run fastest on one thread: OpenMP barrier waits dominate on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def free_port() -> int:
    """A TCP port free now on 127.0.0.1, for a torchrun rendezvous: the default 29500 clashes
    with any other distributed run on the machine."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_terminal(master: int, timeout: float) -> bytes:
    """Everything a child writes to the pseudo-terminal ``master`` until every writer closed it (or
    nothing came for ``timeout`` seconds)."""
    import select

    shown = b""
    while select.select([master], [], [], timeout)[0]:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # every writer closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    return shown


def shrink(cfg, vocab: int = 1000):
    """The same architecture (pooling, CLS layout, decoder) at tiny width and depth."""
    cfg = copy.deepcopy(cfg)
    v, t = cfg.vision, cfg.text
    v.width, v.layers, v.heads = 32, 2, 2
    v.image_size = 2 * v.patch_size
    v.attn_pool_queries, v.attn_pool_heads = min(v.attn_pool_queries, 5), 2
    t.width, t.layers, t.heads, t.vocab_size = 32, 2, 2, vocab
    t.eot_id = min(t.eot_id, vocab - 1)
    cfg.embed_dim = 32 if cfg.model_type == "clip" or v.pool != "attn" else 32
    if cfg.decoder is not None:
        d = cfg.decoder
        d.width, d.layers, d.heads, d.vocab_size = 32, 2, 2, vocab
    cfg.validate()
    return cfg


def perturb(model, scale: float = 0.5, seed: int = 0):
    """Random weights with non-degenerate outputs: noise on every parameter, LayerNorm gains off 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * (p.std() if p.numel() > 1 and p.std() > 0 else 0.02))
    return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A saved tiny CoCa with the CLIP BPE tokenizer (random weights)."""
    from vlm.io.checkpoint import save_pretrained
    from vlm.model.coca import create_model
    from vlm.tokenizers.clip_bpe import CLIPBPETokenizer

    torch.manual_seed(0)
    model = perturb(create_model("tiny"))
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_pretrained(model, out, tokenizer=CLIPBPETokenizer(context_length=model.cfg.text.context_length))
    return out


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory) -> dict[str, Path]:
    """A few valid images and every kind of bad input the CLI must survive."""
    from PIL import Image

    d = tmp_path_factory.mktemp("imgs")
    good = d / "good"
    good.mkdir()
    for i, color in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (40 + 7 * i, 30), color).save(good / f"{i}_{color}.png")
    files = {"good_dir": good, "good": good / "0_red.png"}
    (d / "empty.png").write_bytes(b"")
    files["empty"] = d / "empty.png"
    data = (good / "1_green.png").read_bytes()
    (d / "truncated.png").write_bytes(data[: len(data) // 2])
    files["truncated"] = d / "truncated.png"
    (d / "notimage.jpg").write_text("hello, I am a text file\n")
    files["notimage"] = d / "notimage.jpg"
    Image.new("1", (12000, 8000)).save(d / "bomb.png")  # 96 Mpx > PIL's 89.5 Mpx limit
    files["bomb"] = d / "bomb.png"
    (d / "noimages").mkdir()
    (d / "noimages" / "readme.txt").write_text("no pictures here")
    files["noimages"] = d / "noimages"
    files["missing"] = d / "does_not_exist.png"
    return files


def open_clip_submodule(name: str):
    """``open_clip.<name>`` loaded without running open_clip/__init__ (which imports torchvision
    and timm: seconds); the real module when open_clip is already imported."""
    import importlib
    import importlib.util
    import types

    if "open_clip" in sys.modules:
        return importlib.import_module(f"open_clip.{name}")
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open_clip not installed")
    alias = "_open_clip_reference"
    if alias not in sys.modules:
        pkg = types.ModuleType(alias)
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules[alias] = pkg
    return importlib.import_module(f"{alias}.{name}")


def run_vlm(*args, timeout: float = 180, env=None, fresh: bool = False) -> subprocess.CompletedProcess:
    """Run the real `vlm` console entry point as a subprocess.

    A child forked from a warm interpreter (``tests/fork_server.py``: a real process, without the
    seconds of importing torch); ``fresh=True``, an environment other than the suite's, or
    ``VLM_TEST_FRESH_PROCESSES=1`` starts a fresh interpreter instead.
    """
    full_env = {**os.environ, **(env or {})}
    full_env.pop("VLM_DEBUG", None)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    return run_python(["-m", "vlm.cli.main", *map(str, args)], env=full_env, cwd=REPO, timeout=timeout, fresh=fresh)


class ForkServer:
    """The client of ``tests/fork_server.py``: one warm interpreter per environment, started on first use."""

    PRELOAD = ["torch", "numpy", "PIL.Image", "safetensors.torch", "vlm.api", "vlm.generation.decode"]
    TRAIN_PRELOAD = [*PRELOAD, "accelerate", "vlm.training.loop"]  # for scripts/train.py  # not vlm.cli.main: it runs as __main__
    _servers: dict[tuple, "ForkServer"] = {}
    child_cpu_s = 0.0  # CPU seconds of every forked child so far

    def __init__(self, env: dict, preload: list[str]):
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "fork_server.py"), *preload],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        self._read(600)  # {"ready": true}

    MAX_SERVERS = 3  # one per environment; a test with its own environment (HF_HOME=tmp...) runs fresh

    @staticmethod
    def _key(env: dict, preload: list[str] | None) -> tuple:
        env = {k: v for k, v in env.items() if k != "PYTEST_CURRENT_TEST"}  # changes per test; read by no import
        return tuple(sorted(env.items())) + tuple(preload or ForkServer.PRELOAD)

    @classmethod
    def can_serve(cls, env: dict, preload: list[str] | None) -> bool:
        return cls._key(env, preload) in cls._servers or len(cls._servers) < cls.MAX_SERVERS

    @classmethod
    def get(cls, env: dict, preload: list[str]) -> "ForkServer":
        key = cls._key(env, preload)
        if key not in cls._servers or cls._servers[key].proc.poll() is not None:
            cls._servers[key] = cls(env, preload)
        return cls._servers[key]

    @classmethod
    def close_all(cls) -> None:
        for server in cls._servers.values():  # idle between requests: nothing of a test runs in it
            server.proc.kill()
            server.proc.wait(timeout=60)
            server.proc.stdin.close()
            server.proc.stdout.close()
        cls._servers.clear()

    def _read(self, timeout: float) -> dict:
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fork server died (exit {self.proc.wait()})")
        return json.loads(line)

    def run(self, cmd: list[str], env: dict, cwd, timeout: float) -> subprocess.CompletedProcess:
        import signal
        import tempfile

        kind, target, args = ("module", cmd[1], cmd[2:]) if cmd[0] == "-m" else ("path", cmd[0], cmd[1:])
        with tempfile.TemporaryDirectory(prefix="vlm-fork-") as tmp:
            out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
            self.proc.stdin.write(json.dumps({"kind": kind, "target": target, "args": args, "env": env,
                                              "cwd": str(cwd), "stdout": out, "stderr": err}) + "\n")
            self.proc.stdin.flush()
            pid = self._read(60)["pid"]
            try:
                done = self._read(timeout)
                status = done["status"]
                ForkServer.child_cpu_s += done["cpu_s"]  # not a child of pytest: counted here for timing reports
            except TimeoutError:
                os.killpg(pid, signal.SIGKILL)
                self._read(60)
                raise subprocess.TimeoutExpired([sys.executable, *cmd], timeout) from None
            with open(out, encoding="utf-8", errors="replace") as fo, open(err, encoding="utf-8", errors="replace") as fe:
                return subprocess.CompletedProcess([sys.executable, *cmd], status, fo.read(), fe.read())


def run_python(cmd: list[str], *, env: dict, cwd=REPO, timeout: float = 180, fresh: bool = False,
               preload: list[str] | None = None) -> subprocess.CompletedProcess:
    """``python *cmd`` (``-m MODULE ...`` or ``SCRIPT ...``) as ``subprocess.run(capture_output=True, text=True)``
    gives it; forked from a warm interpreter unless ``fresh`` (see :func:`run_vlm`)."""
    if fresh or os.environ.get("VLM_TEST_FRESH_PROCESSES") == "1" or not ForkServer.can_serve(env, preload):
        return subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    return ForkServer.get(env, preload or ForkServer.PRELOAD).run(cmd, env, cwd, timeout)


@pytest.fixture(autouse=True, scope="session")
def _fork_servers():
    """The warm interpreters end with the session."""
    yield
    ForkServer.close_all()
