"""``OUTPUT/losses.jsonl``: one JSON line per optimizer step, as an uninterrupted run would write it.

A fresh run refuses an ``output_dir`` that already holds a run (its checkpoints, losses or
export would be silently mixed with the new ones): resume it with ``resume=latest`` or choose
another directory. A resumed run first cuts the log back to the checkpoint's step, so the
steps trained after that checkpoint and before the stop are not counted twice.

    log = RunLog.open(out, resumed_step=None)   # main process only
    log.write({"step": 1, "total": 2.3, "lr": 1e-4})
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vlm.io.atomic import write_atomic
from vlm.errors import UsageError

LOG_NAME = "losses.jsonl"
RUN_MARKERS = (LOG_NAME, "checkpoints", "model")  # what makes a directory hold a run


def refuse_reused(out: Path) -> None:
    """UsageError when ``out`` already holds a run and this one does not resume it."""
    found = [name for name in RUN_MARKERS if (Path(out) / name).exists()]
    if found:
        raise UsageError(f"output_dir={out}: already holds a training run ({', '.join(found)}); "
                         f"continue it with resume=latest, or choose another output_dir")


@dataclass
class RunLog:
    path: Path

    @classmethod
    def open(cls, out: Path, resumed_step: Optional[int]) -> "RunLog":
        log = cls(Path(out) / LOG_NAME)
        if resumed_step is not None and log.path.is_file():
            kept = [line for line in log.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resumed_step]
            write_atomic(log.path, "".join(line + "\n" for line in kept))
        return log

    def write(self, record: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
