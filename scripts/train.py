"""Train a CoCa or CLIP model with Hugging Face Accelerate (CoCa: Yu et al. 2022).

    accelerate launch scripts/train.py --config configs/shapes_tiny.yaml
    accelerate launch --num_processes 2 scripts/train.py --config configs/micro.yaml steps=50 lr=3e-4
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 scripts/train.py --config configs/micro.yaml
    python scripts/train.py --config configs/micro.yaml resume=latest
    vlm train --config configs/micro.yaml --num_processes 2 --cpu     # the same, with exact exit codes

``key=value`` overrides reach any config field (dotted for nested ones,
``model.vision.image_size=96`` for the architecture). Exit status: 0 done,
1 the run failed (e.g. a non-finite loss; the message names the step),
2 a bad config or data path, 130 interrupted; under ``accelerate launch`` the
launcher reports every failure as 1 (see docs/training.md, "Exit status"), ``vlm train``
passes the status on. The process stops when its launcher dies (``vlm.training.parent_watch``).
The code is ``vlm.training.cli``.
"""

from __future__ import annotations

import sys
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    from vlm.training.cli import main as train_main

    return train_main(argv)


if __name__ == "__main__":
    sys.exit(main())
