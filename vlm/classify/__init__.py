"""Supervised image classification on a vlm ViT: a classifier model and checkpoint
(``model``, ``checkpoint``), its inference pipeline (``pipeline``), labelled image data
(``data``), the linear probe (``probe``), zero-shot heads built from class names
(``zeroshot``) and the fine-tuning task for the shared training loop (``task``).

    vlm classify photo.jpg --model ckpt/classifier          # the model's own top-5 labels
    vlm probe --model M --train data/train --val data/val --out ckpt/probe
"""
