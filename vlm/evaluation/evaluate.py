"""Evaluate a model on a COCO-format caption dataset: captioning, retrieval and zero-shot.

Reports, as in the CoCa paper's benchmarks (Yu et al. 2022):

- captioning: BLEU-1..4, METEOR, ROUGE-L, CIDEr (and SPICE when its jars are
  installed, else a note) of greedy or beam-search captions against all
  reference captions, via ``vlm.evaluation.captioning``; the captions are those
  ``vlm caption`` writes (``vlm.generation.decode.caption_texts``: guards and word list on);
- retrieval: image->text and text->image recall@1/5/10 over every reference
  caption, ranked by ``torch.topk`` as CLIP_benchmark ranks, with the bound that counts
  every tie against the model beside them (``vlm.evaluation.retrieval``);
- zero-shot: top-1/top-5 accuracy when the dataset has class labels
  (``classes.json`` with classes, templates and labels, as ``vlm data shapes`` writes);
- the ``checks`` a caller passes: metrics of the generated captions that only some datasets
  allow (``CaptionCheck``), e.g. ``shapes_checks(dir)`` of ``vlm.evaluation.shapes_check``, the
  share of single-object shapes images whose caption names the correct color and shape.

    pipe = vlm.load("runs/shapes_tiny/model")
    report = evaluate_model(pipe, "data/shapes_test", checks=shapes_checks("data/shapes_test"))

Run: ``vlm evaluate --model M --data DIR [--split val] [--json]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping, Optional, Protocol, Sequence

import torch

from vlm.generation.config import GenerationConfig


class CaptionCheck(Protocol):
    """A metric of the generated captions that a dataset allows (``evaluate_model(checks=...)``)."""

    def __call__(self, captions: Mapping[int, str]) -> dict:
        """{image_id: generated caption} -> report entries (JSON-safe; empty when nothing applies)."""
        ...

    def lines(self, report: Mapping) -> list[str]:
        """Human-readable lines of its entries in ``report`` (``format_report``)."""
        ...


def load_classes(data_dir: Path) -> Optional[dict]:
    """classes.json ({"classes", "templates", "labels": {image_id: class index}}) or None.
    Without "templates" the model's own prompt templates are used (``templates`` None).

    ValueError naming the file for what zero-shot could not use: no classes, an empty or
    repeated class name, a template without exactly one ``{}`` (or with other fields),
    a label that is not a class index."""
    path = Path(data_dir) / "classes.json"
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a classes file ({e})") from None

    def bad(reason: str) -> ValueError:
        return ValueError(f"{path}: {reason}")

    if not isinstance(raw, dict) or not isinstance(raw.get("classes"), list):
        raise bad('not a classes file (needs a "classes" list)')
    if not raw["classes"]:
        raise bad('"classes" is empty')
    classes = []
    for n, name in enumerate(raw["classes"]):
        if not isinstance(name, str) or not name.strip():
            raise bad(f"class {n} ({name!r}): must be a non-empty name")
        name = name.strip()
        if name in classes:
            raise bad(f"class {n} ({name!r}): repeats class {classes.index(name)}")
        classes.append(name)
    templates = raw.get("templates") or None  # None: the model's own templates
    if templates is not None and (not isinstance(templates, list) or not all(isinstance(t, str) for t in templates)):
        raise bad('"templates" must be a list of strings')
    for t in templates or []:
        if t.count("{}") != 1:
            raise bad(f"template {t!r}: needs exactly one {{}} where the class name goes")
        try:
            t.format(classes[0])
        except (KeyError, IndexError, ValueError) as e:
            raise bad(f"template {t!r}: cannot be filled with a class name "
                      f"({type(e).__name__}: {e})") from None
    if not isinstance(raw.get("labels", {}), dict):
        raise bad('"labels" must map image ids to class indices')
    labels = {}
    for key, value in raw.get("labels", {}).items():
        try:
            image_id = int(key)
        except ValueError:
            raise bad(f"labels: {key!r} is not an image id") from None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(classes):
            raise bad(f"label of image {key}: {value!r} is not a class index 0..{len(classes) - 1}")
        labels[image_id] = value
    return {"classes": classes, "templates": templates, "labels": labels}


@torch.inference_mode()
def evaluate_model(pipe, data_dir, split: Optional[str] = None, batch_size: int = 64, beams: int = 1,
                   max_tokens: int = GenerationConfig.max_tokens, max_images: Optional[int] = None, spice: bool = True,
                   meteor: bool = True, progress=None, checks: Sequence[CaptionCheck] = (),
                   on_skip: Optional[Callable[[str, str], None]] = None) -> dict:
    """All metrics the dataset allows for a loaded ``vlm.api.Pipeline`` (see the module docstring).

    ``checks`` add their entries to the report once captions are generated. ``progress``, if
    given, is called with the number of images of each batch once it is done; ``on_skip`` with
    (path, reason) of each image that could not be read (else the first few are logged)."""
    from vlm.data.collate import SkipCounter, load_or_skip
    from vlm.evaluation.captioning import evaluate_captions
    from vlm.evaluation.retrieval import retrieval_recall
    from vlm.evaluation.zeroshot import topk_accuracy
    from vlm.generation.decode import caption_texts
    from vlm.io.images import load_image, preprocess_batch
    from vlm.data.layout import open_caption_dir

    ds = open_caption_dir(data_dir, split, load_images=False)
    classes = load_classes(Path(data_dir))  # a bad classes.json stops the run before any captioning
    ids = ds.image_ids()[:max_images] if max_images else ds.image_ids()
    skips = SkipCounter(on_skip=on_skip)
    gen_cfg = pipe.generation_config(beams=beams, max_tokens=max_tokens) if pipe.can_caption else None
    tok = pipe.tokenizer
    kept: list[int] = []
    embeds, captions = [], {}
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        if progress is not None:
            progress(len(chunk))  # counted as the batch starts: a bar that has reached N is on its last batch
        images = [load_or_skip(lambda i=i: load_image(ds.image_path(i)), str(ds.image_path(i)), skips)
                  for i in chunk]
        chunk = [i for i, im in zip(chunk, images) if im is not None]
        if not chunk:
            continue
        x = preprocess_batch([im for im in images if im is not None], pipe.preprocess_cfg)
        x = x.to(pipe.device, pipe.input_dtype)  # bfloat16 for a bf16 model
        embeds.append(pipe.model.encode_image(x).float().cpu())
        if gen_cfg is not None:
            texts = caption_texts(pipe.model, x, tok, gen_cfg, lexicon=pipe.lexicon)  # as `vlm caption` writes them
            captions.update(zip(chunk, texts))
        kept += chunk
    if not kept:
        raise ValueError(f"{data_dir}: no readable images ({skips.summary()})")
    image_embeds = torch.cat(embeds)  # (N, E)
    report: dict = {"num_images": len(kept), "skipped_images": skips.skipped, "notes": []}
    if skips.skipped:
        report["notes"].append(f"images: {skips.summary()}")

    refs = {i: ds.captions_for(i) for i in kept}
    if captions:
        cap = evaluate_captions(refs, captions, spice=spice, meteor=meteor)
        report["captioning"] = cap.metrics
        report["notes"] += cap.notes
        report["notes"] += [f"{name} skipped: switched off" for name, on in (("METEOR", meteor), ("SPICE", spice))
                            if not on]
        report["examples"] = [{"image_id": i, "caption": captions[i], "reference": refs[i][0]} for i in kept[:5]]
    else:
        report["notes"].append("captioning skipped: the model has no caption decoder")

    texts = [c for i in kept for c in refs[i]]
    text_to_image = [n for n, i in enumerate(kept) for _ in refs[i]]
    text_embeds = torch.cat([pipe.encode_texts(texts[s:s + 256]).cpu() for s in range(0, len(texts), 256)])
    report["retrieval"] = retrieval_recall(image_embeds @ text_embeds.t(), text_to_image)

    if classes is not None:
        rows = [n for n, i in enumerate(kept) if i in classes["labels"]]
        if rows:
            label_embeds = pipe.label_embeddings(classes["classes"], classes["templates"]).cpu()
            logits = image_embeds[rows] @ label_embeds.t()  # (N_labelled, C)
            labels = [classes["labels"][kept[n]] for n in rows]
            report["zero_shot"] = {**topk_accuracy(logits, labels), "num_images": len(rows),
                                   "num_classes": len(classes["classes"])}
        else:
            report["notes"].append("zero-shot skipped: classes.json labels none of the evaluated images")
    else:
        report["notes"].append("zero-shot skipped: no classes.json in the dataset")

    if captions:  # metrics of the generated captions that this dataset allows
        for check in checks:
            report.update(check(captions))
    return report


def format_report(report: dict, checks: Sequence[CaptionCheck] = ()) -> str:
    """Human-readable lines of an ``evaluate_model`` report (with the lines of its ``checks``)."""
    lines = [f"images: {report['num_images']} (skipped {report['skipped_images']})"]
    if "captioning" in report:
        lines.append("captioning: " + ", ".join(f"{k}={v:.4f}" for k, v in report["captioning"].items()))
    r = report["retrieval"]
    keys = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")
    lines.append("retrieval (top-k as CLIP_benchmark ranks): " + ", ".join(f"{k}={r[k]:.4f}" for k in keys))
    if any(f"{k}_worst" in r and r[f"{k}_worst"] != r[k] for k in keys):  # the figures differ only through ties
        lines.append("retrieval (every tie counted against the model): "
                     + ", ".join(f"{k}={r[f'{k}_worst']:.4f}" for k in keys))
    if "zero_shot" in report:
        z = report["zero_shot"]
        lines.append(f"zero-shot ({z['num_images']} images, {z['num_classes']} classes): "
                     f"top1={z['top1']:.4f}, top5={z['top5']:.4f}")
    for check in checks:
        lines += check.lines(report)
    for ex in report.get("examples", [])[:3]:
        lines.append(f"  {ex['image_id']}: {ex['caption']!r} (ref: {ex['reference']!r})")
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)
