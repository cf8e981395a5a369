"""Reaching the Hugging Face Hub (or a mirror, ``HF_ENDPOINT``) without hanging on a bad network.

``can_reach(url)`` connects to the URL's host within a few seconds (offline mode and proxies
respected), so a download that cannot work fails in one line instead of after long retries;
``short_hub_timeouts`` caps huggingface_hub's own waits. Used by every remote loader
(``vlm.convert.remote`` for open_clip: and hf:, ``vlm.convert.timm`` for timm:).
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

CONNECT_TIMEOUT_S = 3.0


def offline_env() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def can_reach(url: str) -> bool:
    """True unless offline mode is set or the URL's host cannot be connected to within a few seconds.

    The port is the URL's own (``HF_ENDPOINT=http://mirror:8080`` probes 8080), else the scheme's
    (443 for https, 80 for http). Behind a proxy the proxy decides, so the check is left to the
    download's own timeouts.
    """
    if offline_env():
        return False
    parsed = urlparse(url if "://" in url else f"https://{url}")
    proxies = ("HTTPS_PROXY", "https_proxy") if parsed.scheme == "https" else ("HTTP_PROXY", "http_proxy")
    if any(os.environ.get(v) for v in proxies + ("ALL_PROXY", "all_proxy")):
        return True
    try:
        port = parsed.port or (80 if parsed.scheme == "http" else 443)
    except ValueError:  # a port outside 0-65535
        return False
    if not parsed.hostname:
        return False
    try:
        with socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def short_hub_timeouts() -> None:
    """Keep huggingface_hub from waiting long on a bad network (read when it is first imported)."""
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
