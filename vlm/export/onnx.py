"""``vlm export onnx``: a model as ONNX graphs plus a manifest that makes them usable without vlm.

Writes into the output directory:

- ``image_encoder.onnx``  pixel_values (B, 3, S, S) -> image_embeds (B, E), image_tokens (B, N, D)
- ``text_encoder.onnx``   input_ids (B, L) int64 -> text_embeds (B, E)
- a supervised classifier (``vlm.classify``) instead: ``classifier.onnx`` pixel_values -> logits (B, C),
  the label names in the manifest;
- CoCa only: ``caption_image_kv.onnx`` image_tokens -> image_kv, and ``caption_step.onnx``
  (input_ids, past_text, past_decoder, image_kv) -> (logits, present_text, present_decoder);
  see ``vlm.export.onnx_graphs`` for the cache layout;
- ``tokenizer/`` (the model's tokenizer files) and ``manifest.json``: opset, onnx and
  onnxruntime versions, every graph's inputs/outputs with their dynamic axes, the
  preprocessing, the tokenizer ids, the logit scale and the decoding limits.

Batch axes are dynamic everywhere, the sequence axes where they apply (text length,
cached and new positions). Before the directory is renamed into place every graph is run
with onnxruntime (CPU) on random inputs and compared with the PyTorch model; the largest
differences are recorded in the manifest and an export off by more than 1e-4 is refused.
``vlm.export.onnx_runtime`` drives the graphs with onnxruntime and numpy only.

    vlm export onnx --model vlm/pretrained/default --out exported/onnx
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from vlm.export.common import ExportRefused
from vlm.export.onnx_graphs import ClassifierGraph, DecoderStepGraph, ImageEncoderGraph, ImageKVGraph, TextEncoderGraph

OPSET = 17
TOLERANCE = 1e-4
MANIFEST = "manifest.json"


def _export(module, args, path: Path, inputs: list[str], outputs: list[str], dynamic: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=OPSET, input_names=inputs,
                          output_names=outputs, dynamic_axes=dynamic, do_constant_folding=True)


def _axes(names: dict[str, dict[int, str]]) -> dict:
    return {k: dict(v) for k, v in names.items()}


def _io_spec(session) -> dict:
    def one(arg):
        return {"shape": [d if isinstance(d, int) else str(d) for d in arg.shape], "type": arg.type}

    return {"inputs": {a.name: one(a) for a in session.get_inputs()},
            "outputs": {a.name: one(a) for a in session.get_outputs()}}


def _maxdiff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _cache_dims(model) -> dict:
    t, d = model.cfg.text, model.cfg.decoder
    return {"text_layers": t.layers, "text_heads": t.heads, "text_head_dim": t.width // t.heads,
            "decoder_layers": d.layers, "decoder_heads": d.heads, "decoder_head_dim": d.width // d.heads}


def export_onnx(model, tokenizer, out: Path, source: str = "") -> dict:
    """Write the graphs, tokenizer and manifest of ``model`` into the (empty) directory ``out``; returns the manifest."""
    import onnx
    import onnxruntime

    from vlm import __version__
    from vlm.io.images import PreprocessConfig

    model = model.float().eval()
    cfg = model.cfg
    if cfg.model_type == "classifier":
        return _export_classifier(model, out, source)
    S = cfg.vision.image_size
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, S, S, generator=g)
    L = cfg.text.context_length
    ids = tokenizer(["a photo", "two red squares and a blue circle"], context_length=L)
    graphs, parity = {}, {}
    with torch.no_grad():
        _export(ImageEncoderGraph(model), (pixels,), out / "image_encoder.onnx", ["pixel_values"],
                ["image_embeds", "image_tokens"],
                _axes({"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}, "image_tokens": {0: "batch"}}))
        _export(TextEncoderGraph(model), (ids,), out / "text_encoder.onnx", ["input_ids"], ["text_embeds"],
                _axes({"input_ids": {0: "batch", 1: "sequence"}, "text_embeds": {0: "batch"}}))
        sess = _session(out / "image_encoder.onnx")
        emb, tokens = sess.run(None, {"pixel_values": pixels.numpy()})
        ref = model.visual(pixels)
        parity["image_embeds"] = _maxdiff(emb, model.encode_image(pixels))
        parity["image_tokens"] = _maxdiff(tokens, ref.tokens)
        graphs["image_encoder"] = {"file": "image_encoder.onnx", **_io_spec(sess)}
        sess = _session(out / "text_encoder.onnx")
        parity["text_embeds"] = _maxdiff(sess.run(None, {"input_ids": ids.numpy()})[0], model.encode_text(ids))
        graphs["text_encoder"] = {"file": "text_encoder.onnx", **_io_spec(sess)}
        if cfg.model_type == "coca":
            graphs.update(_export_caption(model, ref.tokens, out, parity))
    worst = max(parity.values())
    if not worst <= TOLERANCE:
        raise ExportRefused(f"{source or 'model'}: onnxruntime differs from PyTorch by {worst:.2e} "
                            f"(> {TOLERANCE}) in {max(parity, key=parity.get)}; not exported")
    tokenizer.save(out / "tokenizer")
    manifest = {
        "format": "vlm-onnx",
        "vlm_version": __version__,
        "source": source,
        "model_type": cfg.model_type,
        "opset": OPSET,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": onnxruntime.__version__,
        "torch_version": torch.__version__,
        "graphs": graphs,
        "preprocess": PreprocessConfig.for_model(cfg).to_dict(),
        "tokenizer": {"dir": "tokenizer", "type": getattr(tokenizer, "type_name", ""),
                      "files": sorted(p.name for p in (out / "tokenizer").iterdir()),
                      "context_length": L, "sot_id": tokenizer.sot_id, "eot_id": tokenizer.eot_id,
                      "pad_id": tokenizer.pad_id, "vocab_size": tokenizer.vocab_size},
        "logit_scale": float(model.logit_scale.detach().exp()),
        "parity_max_abs_diff": parity,
    }
    if cfg.model_type == "coca":
        manifest["caption"] = {
            "max_positions": min(cfg.decoder.context_length, cfg.text.context_length) - 1,
            "default_max_tokens": 30, **_cache_dims(model)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _export_caption(model, image_tokens: torch.Tensor, out: Path, parity: dict) -> dict:
    """Export and check the image key/value graph and the decoding step."""
    from vlm.generation.decode import _Stepper

    graphs = {}
    _export(ImageKVGraph(model), (image_tokens,), out / "caption_image_kv.onnx", ["image_tokens"], ["image_kv"],
            _axes({"image_tokens": {0: "batch"}, "image_kv": {2: "batch"}}))
    kv_sess = _session(out / "caption_image_kv.onnx")
    image_kv = ImageKVGraph(model)(image_tokens)
    parity["image_kv"] = _maxdiff(kv_sess.run(None, {"image_tokens": image_tokens.numpy()})[0], image_kv)
    graphs["caption_image_kv"] = {"file": "caption_image_kv.onnx", **_io_spec(kv_sess)}
    B, dims = image_tokens.shape[0], _cache_dims(model)
    # Trace with two cached positions and two new ones, so no axis is a constant 1 or 0.
    ids = torch.tensor([[5, 7], [9, 11]])[:B] % model.cfg.text.vocab_size
    step = DecoderStepGraph(model)
    empty_t = torch.zeros(dims["text_layers"], 2, B, dims["text_heads"], 0, dims["text_head_dim"])
    empty_d = torch.zeros(dims["decoder_layers"], 2, B, dims["decoder_heads"], 0, dims["decoder_head_dim"])
    _, past_t, past_d = step(ids, empty_t, empty_d, image_kv)
    cache_axes = {2: "batch", 4: "past"}
    _export(step, (ids, past_t, past_d, image_kv), out / "caption_step.onnx",
            ["input_ids", "past_text", "past_decoder", "image_kv"], ["logits", "present_text", "present_decoder"],
            _axes({"input_ids": {0: "batch", 1: "new"}, "past_text": cache_axes, "past_decoder": cache_axes,
                   "image_kv": {2: "batch"}, "logits": {0: "batch"}, "present_text": {2: "batch", 4: "total"},
                   "present_decoder": {2: "batch", 4: "total"}}))
    sess = _session(out / "caption_step.onnx")
    # Check against vlm's own cached stepper: a 3-token prompt from an empty cache, then one token.
    stepper = _Stepper(model, image_tokens)
    prompt = torch.tensor([[2, 5, 7], [2, 9, 4]])[:B] % model.cfg.text.vocab_size
    feeds = {"input_ids": prompt.numpy(), "past_text": empty_t.numpy(), "past_decoder": empty_d.numpy(),
             "image_kv": image_kv.numpy()}
    logits, pt, pd = sess.run(None, feeds)
    diff = _maxdiff(logits, stepper(prompt))
    nxt = prompt[:, -1:] % 3 + 4
    logits, _, _ = sess.run(None, {**feeds, "input_ids": nxt.numpy(), "past_text": pt, "past_decoder": pd})
    parity["caption_logits"] = max(diff, _maxdiff(logits, stepper(nxt)))
    graphs["caption_step"] = {"file": "caption_step.onnx", **_io_spec(sess)}
    return graphs


def _manifest_head(cfg, source: str) -> dict:
    import onnx
    import onnxruntime

    from vlm import __version__

    return {"format": "vlm-onnx", "vlm_version": __version__, "source": source, "model_type": cfg.model_type,
            "opset": OPSET, "onnx_version": onnx.__version__, "onnxruntime_version": onnxruntime.__version__,
            "torch_version": torch.__version__}


def _export_classifier(model, out: Path, source: str) -> dict:
    from vlm.io.images import PreprocessConfig

    S = model.cfg.vision.image_size
    pixels = torch.randn(2, 3, S, S, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _export(ClassifierGraph(model), (pixels,), out / "classifier.onnx", ["pixel_values"], ["logits"],
                _axes({"pixel_values": {0: "batch"}, "logits": {0: "batch"}}))
        sess = _session(out / "classifier.onnx")
        diff = _maxdiff(sess.run(None, {"pixel_values": pixels.numpy()})[0], model(pixels).logits)
    if not diff <= TOLERANCE:
        raise ExportRefused(f"{source or 'model'}: onnxruntime differs from PyTorch by {diff:.2e} (> {TOLERANCE}) "
                            f"in the logits; not exported")
    manifest = {**_manifest_head(model.cfg, source),
                "graphs": {"classifier": {"file": "classifier.onnx", **_io_spec(sess)}},
                "preprocess": PreprocessConfig.for_model(model.cfg).to_dict(), "labels": list(model.cfg.labels),
                "parity_max_abs_diff": {"logits": diff}}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
