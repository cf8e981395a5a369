"""Run a ``vlm export onnx`` directory with onnxruntime and numpy alone (no torch, no vlm model).

``OnnxModel(DIR)`` reads ``manifest.json`` and opens the graphs on the CPU:
``encode_images(pixels)`` and ``encode_texts(ids)`` give L2-normalised embeddings and
``greedy(pixels)`` decodes captions token by token with the explicit key/value caches,
vlm's greedy rule without the decoding guards (argmax; finished rows padded; stop when every
row has emitted the end token or the length limit is reached): the raw tokens the export's
parity checks compare (``vlm caption`` adds the guards of ``vlm.generation.guards``). ``preprocess(image)``
applies the manifest's preprocessing with PIL and numpy.

This module imports only the standard library, numpy, PIL and onnxruntime, so it can be
copied next to an exported directory and used where vlm is not installed.

    >>> m = OnnxModel("exported/onnx")
    >>> pixels = np.stack([m.preprocess(Image.open("examples/orange_star.png"))])
    >>> m.greedy(pixels)          # [[token ids]]; decode them with the tokenizer in DIR/tokenizer
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import numpy as np


class OnnxModel:
    def __init__(self, directory, threads: Optional[int] = None):
        import onnxruntime as ort

        self.dir = Path(directory)
        self.manifest = json.loads((self.dir / "manifest.json").read_text())
        self._opts = ort.SessionOptions()
        if threads:
            self._opts.intra_op_num_threads = threads
        self._sessions: dict = {}

    def session(self, name: str):
        if name not in self._sessions:
            import onnxruntime as ort

            path = self.dir / self.manifest["graphs"][name]["file"]
            self._sessions[name] = ort.InferenceSession(str(path), self._opts, providers=["CPUExecutionProvider"])
        return self._sessions[name]

    # -- preprocessing ----------------------------------------------------------------------
    def preprocess(self, image) -> np.ndarray:
        """A PIL image -> (3, S, S) float32, as the manifest's preprocessing says (RGB input)."""
        from PIL import Image

        p = self.manifest["preprocess"]
        size, resample = p["image_size"], {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[p["interpolation"]]
        crop_pct = p.get("crop_pct", 1.0)
        scale = size if crop_pct == 1.0 else math.floor(size / crop_pct)  # resize larger, then crop (timm)
        image = image.convert("RGB")
        w, h = image.size
        if p["resize_mode"] == "squash":
            new = (scale, scale)
        elif p["resize_mode"] == "shortest":
            new = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
        else:  # longest: scale the long side, then pad with black
            r = max(w / scale, h / scale)
            new = (round(w / r), round(h / r))
        if image.size != new:
            image = image.resize(new, resample)
        if image.size != (size, size):
            image = _center_crop(image, size, p["crop_rounding"])
        x = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255)  # (S, S, 3)
        x = (x - np.array(p["mean"], dtype=np.float32)) / np.array(p["std"], dtype=np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    # -- encoders ---------------------------------------------------------------------------
    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        return self.session("image_encoder").run(["image_embeds"], {"pixel_values": pixels})[0]

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """A supervised classifier's (B, C) class logits; the names are ``manifest["labels"]``."""
        return self.session("classifier").run(None, {"pixel_values": pixels})[0]

    def encode_texts(self, ids: np.ndarray) -> np.ndarray:
        return self.session("text_encoder").run(None, {"input_ids": ids.astype(np.int64)})[0]

    # -- captioning -------------------------------------------------------------------------
    def greedy(self, pixels: np.ndarray, max_tokens: Optional[int] = None) -> list[list[int]]:
        """Greedy caption ids (no start/end tokens) for a (B, 3, S, S) batch."""
        cap, tok = self.manifest["caption"], self.manifest["tokenizer"]
        sot, eot, pad = tok["sot_id"], tok["eot_id"], tok["pad_id"]
        n = min(max_tokens or cap["default_max_tokens"], cap["max_positions"])
        tokens = self.session("image_encoder").run(["image_tokens"], {"pixel_values": pixels})[0]
        image_kv = self.session("caption_image_kv").run(None, {"image_tokens": tokens})[0]
        B = pixels.shape[0]
        past_t = np.zeros((cap["text_layers"], 2, B, cap["text_heads"], 0, cap["text_head_dim"]), np.float32)
        past_d = np.zeros((cap["decoder_layers"], 2, B, cap["decoder_heads"], 0, cap["decoder_head_dim"]), np.float32)
        step = self.session("caption_step")
        ids = np.full((B, 1), sot, dtype=np.int64)
        out = np.zeros((B, 0), dtype=np.int64)
        finished = np.zeros(B, dtype=bool)
        for _ in range(n):
            logits, past_t, past_d = step.run(None, {"input_ids": ids, "past_text": past_t, "past_decoder": past_d,
                                                     "image_kv": image_kv})
            nxt = np.where(finished, pad, logits.argmax(-1))
            finished |= nxt == eot
            out = np.concatenate([out, nxt[:, None]], axis=1)
            ids = nxt[:, None].astype(np.int64)
            if finished.all():
                break
        rows = []
        for row in out.tolist():
            row = row[: row.index(eot)] if eot in row else row
            rows.append([t for t in row if t != pad])
        return rows


def _center_crop(image, size: int, rounding: str):
    from PIL import Image

    w, h = image.size
    if w < size or h < size:  # pad with black first (extra pixel right/bottom)
        canvas = Image.new(image.mode, (max(w, size), max(h, size)), 0)
        canvas.paste(image, ((size - w) // 2 if size > w else 0, (size - h) // 2 if size > h else 0))
        image, (w, h) = canvas, canvas.size
        if (w, h) == (size, size):
            return image
    if rounding == "floor":
        top, left = (h - size) // 2, (w - size) // 2
    else:
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))
