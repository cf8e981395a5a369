"""The ``hf:`` and ``open_clip:`` download paths, end to end, against a local server in the Hub's
URL layout (tests/hub_server.py on 127.0.0.1 at a free port, started and stopped here).

The real huggingface_hub code (and open_clip's own download for a pretrained tag) downloads the
files into a temporary ``HF_HOME``, and vlm loads them: through ``vlm.load`` in a fresh Python
process and through the CLI. A second load uses the cache and downloads nothing, and still works
once the server is gone. The checkpoints are made here: a tiny transformers CLIPModel, and the real
open_clip ViT-B-32 layout (random fp16 weights) under the repo its ``laion2b_s34b_b79k`` tag names.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import REPO, run_vlm
from hub_server import HubServer

HF_REPO = "test-org/tiny-clip"
OC_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"  # where open_clip's ViT-B-32 laion2b_s34b_b79k tag points
TEXTS = ["a red square", "a photo of a cat"]

LOAD_SCRIPT = """
import json, sys
import vlm
m = vlm.load(sys.argv[1])
print(json.dumps(m.similarity([sys.argv[2]], sys.argv[3:]).tolist()))
"""


def hub_env(hub_url: str, home) -> dict:
    return {"HF_ENDPOINT": hub_url, "HF_HOME": str(home), "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def api_load(name: str, image, env: dict) -> list:
    """vlm.load(name).similarity in a fresh process (huggingface_hub reads HF_ENDPOINT on import)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HTTP", "HTTPS", "ALL_PROXY"))}
    full.update(env, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, name, str(image), *TEXTS], env=full,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cli_similarity(name: str, image, env: dict) -> list:
    r = run_vlm("similarity", "--images", str(image), "--texts", *TEXTS, "--json", "--model", name, env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    return json.loads(r.stdout)["cosine"]


def close(a, b, tol=1e-4) -> bool:
    return torch.allclose(torch.tensor(a), torch.tensor(b), atol=tol)


@pytest.fixture(scope="module")
def hf_repo(tmp_path_factory):
    pytest.importorskip("transformers")
    from test_convert_hf import make_hf_dir

    d = tmp_path_factory.mktemp("hub") / "tiny-clip"
    make_hf_dir(d)
    return d


def test_can_reach_probes_the_endpoints_own_port_and_scheme(monkeypatch):
    from vlm.convert.hub import can_reach

    for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY",
              "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(v, raising=False)
    with HubServer({}) as hub:  # a plain-http mirror on a port that is not 443
        assert can_reach(hub.url)
        assert can_reach(f"{hub.url}/org/model")
        port = hub.port
    assert not can_reach(f"http://127.0.0.1:{port}")  # the server is gone
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert not can_reach(f"http://127.0.0.1:{free}/x")
    assert not can_reach("http://127.0.0.1:99999")  # no such port: refused, not an exception
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with HubServer({}) as hub:
        assert not can_reach(hub.url)


@pytest.mark.slow
def test_hf_hub_id_downloads_caches_and_loads(hf_repo, tmp_path, sample_images):
    import vlm

    image = sample_images["good"]
    expected = vlm.load(f"hf:{hf_repo}").similarity([image], TEXTS).tolist()  # the same files, read locally
    files = {p.name: p for p in hf_repo.iterdir() if p.is_file()}
    with HubServer({HF_REPO: files}) as hub:
        api_home, cli_home = tmp_path / "api_home", tmp_path / "cli_home"
        got = api_load(f"hf:{HF_REPO}", image, hub_env(hub.url, api_home))
        assert close(got, expected)
        assert hub.downloads("model.safetensors") == 1 and hub.downloads("config.json") == 1
        snapshots = list((api_home / "hub").glob("models--test-org--tiny-clip/snapshots/*/model.safetensors"))
        assert len(snapshots) == 1
        assert close(cli_similarity(f"hf:{HF_REPO}", image, hub_env(hub.url, cli_home)), expected)
        assert hub.downloads("model.safetensors") == 2
        # the cache answers: no second download, even with the server up
        assert close(api_load(f"hf:{HF_REPO}", image, hub_env(hub.url, api_home)), expected)
        assert hub.downloads("model.safetensors") == 2
        assert not any("/resolve/" in p and "missing" in p for _, p in hub.requests)
        url = hub.url
    # server gone: the cached copy still loads, and an uncached id is one clear line
    assert close(cli_similarity(f"hf:{HF_REPO}", image, hub_env(url, cli_home)), expected)
    r = run_vlm("similarity", "--images", str(image), "--texts", "a", "--model", "hf:test-org/other",
                env=hub_env(url, cli_home))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "could not download (offline?)" in r.stderr
    assert f"{url}/test-org/other" in r.stderr


@pytest.mark.slow
def test_hf_hub_unknown_repo_through_a_live_mirror_is_one_line(hf_repo, tmp_path, sample_images):
    with HubServer({HF_REPO: {p.name: p for p in hf_repo.iterdir() if p.is_file()}}) as hub:
        r = run_vlm("similarity", "--images", str(sample_images["good"]), "--texts", "a", "--model",
                    "hf:test-org/no-such-model", env=hub_env(hub.url, tmp_path / "home"))
        assert any(p.startswith("/api/models/test-org/no-such-model") for _, p in hub.requests)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert "hf:test-org/no-such-model: could not download from" in r.stderr


@pytest.mark.slow
def test_open_clip_tag_downloads_caches_and_loads(tmp_path, sample_images):
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file

    import vlm
    from parity_weights import randomize_

    repo = tmp_path / "oc_repo"
    repo.mkdir()
    oc = randomize_(open_clip.create_model("ViT-B-32"), seed=0).eval()
    weights = repo / "open_clip_model.safetensors"
    save_file({k: v.detach().half().contiguous() for k, v in oc.state_dict().items()}, str(weights))
    del oc
    image = sample_images["good"]
    name = "open_clip:ViT-B-32@laion2b_s34b_b79k"
    expected = vlm.load(f"open_clip:ViT-B-32@{weights}").similarity([image], TEXTS).tolist()  # read locally
    with HubServer({OC_REPO: {weights.name: weights}}) as hub:
        api_home, cli_home = tmp_path / "api_home", tmp_path / "cli_home"
        assert close(api_load(name, image, hub_env(hub.url, api_home)), expected)
        assert hub.downloads(weights.name) == 1
        assert list((api_home / "hub").glob("models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K/snapshots/*/" + weights.name))
        r = run_vlm("similarity", "--images", str(image), "--texts", *TEXTS, "--json", "--model",
                    "open_clip:ViT-B-32", "--pretrained", "laion2b_s34b_b79k", env=hub_env(hub.url, cli_home))
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert close(json.loads(r.stdout)["cosine"], expected)
        assert hub.downloads(weights.name) == 2
        url = hub.url
    # server gone: the copy in the cache is found without any network
    assert close(api_load(name, image, hub_env(url, api_home)), expected)
