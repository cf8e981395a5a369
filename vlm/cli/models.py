"""``vlm models``: the named architectures and the checkpoints available."""

from __future__ import annotations

import json
from typing import Optional

from vlm.cli.common import Parser


def main(argv: Optional[list[str]] = None) -> int:
    p = Parser(prog="vlm models", description="List model configs and checkpoints.")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from vlm.api import PRETRAINED_DIR, shipped_checkpoints
    from vlm.model.config import CONFIG_DIR, list_configs

    configs = []
    for name in list_configs():
        raw = json.loads((CONFIG_DIR / f"{name}.json").read_text())
        configs.append({"name": name, "type": raw.get("model_type"), "description": raw.get("description", "")})
    checkpoints = [{"name": n, "path": str(PRETRAINED_DIR / n)} for n in shipped_checkpoints()]
    if args.json:
        print(json.dumps({"configs": configs, "checkpoints": checkpoints}))
        return 0
    print("Architectures (vlm/model/model_configs; weights come from training or `vlm convert`):")
    for c in configs:
        print(f"  {c['name']:<15} {c['type']:<5} {c['description']}")
    print("Checkpoints (use with --model):")
    for c in checkpoints:
        print(f"  {c['name']:<15} {c['path']}")
    if not checkpoints:
        print("  (none shipped yet)")
    print("Also: --model DIR (a saved checkpoint), open_clip:ARCH --pretrained TAG_OR_FILE, hf:NAME_OR_DIR")
    return 0
