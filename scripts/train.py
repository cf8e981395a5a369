"""Train a CoCa or CLIP model with Hugging Face Accelerate (CoCa: Yu et al. 2022).

    accelerate launch scripts/train.py --config configs/shapes_tiny.yaml
    accelerate launch --num_processes 2 scripts/train.py --config configs/micro.yaml steps=50 lr=3e-4
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 scripts/train.py --config configs/micro.yaml
    python scripts/train.py --config configs/micro.yaml resume=latest

``key=value`` overrides reach any config field (dotted for nested ones,
``model.vision.image_size=96`` for the architecture). Exit status: 0 done,
1 the run failed (e.g. a non-finite loss; the message names the step),
2 a bad config or data path.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML training recipe (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config fields")
    args = parser.parse_args(argv)

    from vlm.training.config import load_train_config

    try:
        cfg = load_train_config(args.config, args.overrides)
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    from vlm.errors import VlmError
    from vlm.training.loop import NonFiniteLossError, train  # torch, accelerate: after the config is good

    try:
        train(cfg)
    except NonFiniteLossError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 1
    except (VlmError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"train.py: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
