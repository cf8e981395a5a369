"""Caption metrics as the COCO caption evaluation computes them (pycocoevalcap).

``caption_metrics(references, candidates)`` returns ``{"bleu_1".."bleu_4",
"meteor", "rouge_l", "cider", "spice"}`` (pycocoevalcap's scale: BLEU, METEOR,
ROUGE-L and SPICE in 0..1, CIDEr(-D) in 0..10).  Captions are lower-cased and
split by the Stanford PTB tokenizer (Java) and punctuation is dropped, exactly
as ``pycocoevalcap.eval.COCOEvalCap`` does; candidates are scored against the
references of their image id, over the ids of ``candidates``.

``evaluate_captions`` returns a ``CaptionReport``: the same metrics, per-image
scores and ``notes`` saying what was left out and why.  A metric that cannot
run is omitted with a note, never a crash or a hang (every Java step has a
timeout):

* SPICE needs Stanford CoreNLP 3.6.0 jars that pycocoevalcap downloads on first
  use; without network they are missing and SPICE is skipped (no download is
  attempted).  Copy ``stanford-corenlp-3.6.0.jar`` and
  ``stanford-corenlp-3.6.0-models.jar`` into ``spice_lib_dir()`` to enable it.
* Without Java, a Python tokenizer replaces PTB and METEOR/SPICE are skipped.

Run: ``python -m vlm.evaluation.captioning REFS.json CANDIDATES.json`` with
``{id: [captions]}`` and ``{id: caption}`` JSON files.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Hashable, Mapping, Optional, Sequence

METRIC_NAMES = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider", "spice")
_LINE_BREAKS = re.compile(r"[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


@dataclass
class CaptionReport:
    """Corpus metrics, per-image scores (metric -> {id: score}) and notes."""

    metrics: dict[str, float]
    per_image: dict[str, dict[Hashable, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"metrics": dict(self.metrics), "notes": list(self.notes)}


def caption_metrics(
    references: Mapping[Hashable, Sequence[str]],
    candidates: Mapping[Hashable, str],
    spice: bool = True,
    meteor: bool = True,
) -> dict[str, float]:
    """Corpus-level caption metrics (see the module docstring).

    Metrics that could not be computed are absent; the reason is issued as a
    ``UserWarning`` (``evaluate_captions`` returns it as ``notes``).
    """
    report = evaluate_captions(references, candidates, spice=spice, meteor=meteor)
    for note in report.notes:
        warnings.warn(note, stacklevel=2)
    return report.metrics


def evaluate_captions(
    references: Mapping[Hashable, Sequence[str]],
    candidates: Mapping[Hashable, str],
    spice: bool = True,
    meteor: bool = True,
    timeout_s: float = 600.0,
) -> CaptionReport:
    """Score ``candidates`` against ``references``; never raises for a missing tool.

    Raises ValueError for bad input: no candidates, a candidate id without
    references, a non-string caption.
    """
    refs, cands, notes = _check_inputs(references, candidates)
    ids = list(cands)
    java = shutil.which("java")
    if java is None:
        notes.append("Java not found: PTB tokenizer replaced by a Python tokenizer; METEOR and SPICE skipped")
    gts, res = _tokenize(refs, cands, java, timeout_s, notes)

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    metrics: dict[str, float] = {}
    per_image: dict[str, dict[Hashable, float]] = {}

    def put(name: str, score: float, scores: Sequence[float]) -> None:
        metrics[name] = float(score)
        per_image[name] = {i: float(s) for i, s in zip(ids, scores)}

    bleu, bleu_scores = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        put(f"bleu_{n + 1}", bleu[n], bleu_scores[n])
    if meteor and java is not None:
        try:
            put("meteor", *_meteor(gts, res, ids, java, timeout_s))
        except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:
            notes.append(f"METEOR skipped: {exc}")
    put("rouge_l", *Rouge().compute_score(gts, res))
    put("cider", *Cider().compute_score(gts, res))
    if spice:
        if java is None:
            pass  # already noted
        elif (missing := spice_missing_files()):
            notes.append(
                f"SPICE skipped: {', '.join(missing)} not found in {spice_lib_dir()} "
                "(pycocoevalcap downloads Stanford CoreNLP 3.6.0 on first use; no download attempted)"
            )
        else:
            try:
                put("spice", *_spice(gts, res, ids, java, timeout_s))
            except (OSError, RuntimeError, ValueError, KeyError, subprocess.SubprocessError) as exc:
                notes.append(f"SPICE skipped: {exc}")
    ordered = {k: metrics[k] for k in METRIC_NAMES if k in metrics}
    return CaptionReport(ordered, per_image, notes)


def _check_inputs(references, candidates) -> tuple[dict, dict, list[str]]:
    if not candidates:
        raise ValueError("candidates: empty (nothing to score)")
    refs: dict = {}
    cands: dict = {}
    for key, text in candidates.items():
        if not isinstance(text, str):
            raise ValueError(f"candidates[{key!r}]: must be a string, got {type(text).__name__}")
        if key not in references:
            raise ValueError(f"candidates[{key!r}]: no references for this id")
        ref_list = references[key]
        if isinstance(ref_list, str) or not ref_list:
            raise ValueError(f"references[{key!r}]: must be a non-empty list of strings")
        if not all(isinstance(r, str) for r in ref_list):
            raise ValueError(f"references[{key!r}]: every reference must be a string")
        refs[key] = list(ref_list)
        cands[key] = text
    notes = []
    extra = len(set(references) - set(candidates))
    if extra:
        notes.append(f"{extra} reference ids have no candidate; scored on the {len(cands)} candidates")
    return refs, cands, notes


# ----------------------------------------------------------------------------- tokenization


def _tokenize(refs: dict, cands: dict, java: Optional[str], timeout_s: float, notes: list[str]):
    """PTB-tokenize everything in one Java call; {id: [tokenized str]} for refs and cands."""
    ids = list(cands)
    sentences = [s for i in ids for s in refs[i]] + [cands[i] for i in ids]
    tokenized = None
    if java is not None:
        try:
            tokenized = _ptb_tokenize(sentences, java, timeout_s)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            notes.append(f"PTB tokenizer failed ({exc}); used a Python tokenizer")
    if tokenized is None:
        tokenized = [_python_tokenize(s) for s in sentences]
    gts, pos = {}, 0
    for i in ids:
        gts[i] = tokenized[pos : pos + len(refs[i])]
        pos += len(refs[i])
    res = {i: [tokenized[pos + k]] for k, i in enumerate(ids)}
    return gts, res


def _ptb_tokenize(sentences: list[str], java: str, timeout_s: float) -> list[str]:
    from pycocoevalcap.tokenizer import ptbtokenizer

    jar = Path(ptbtokenizer.__file__).parent / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR
    lines = [_LINE_BREAKS.sub(" ", s) for s in sentences]
    cmd = [java, "-Dfile.encoding=UTF-8", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
           "-preserveLines", "-lowerCase", "-encoding", "UTF-8"]
    proc = subprocess.run(cmd, input="\n".join(lines).encode("utf-8"), capture_output=True,
                          timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"exit status {proc.returncode}: {proc.stderr.decode(errors='replace')[-200:]}")
    out = proc.stdout.decode("utf-8", errors="replace").split("\n")
    if len(out) > len(lines) and out[-1] == "":
        out = out[:-1]
    if len(out) != len(lines):
        raise RuntimeError(f"got {len(out)} lines for {len(lines)} sentences")
    drop = set(ptbtokenizer.PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w not in drop) for line in out]


_PY_TOKEN = re.compile(r"[a-z0-9]+(?:['’][a-z]+)?|[^\sa-z0-9]", re.IGNORECASE)
_PY_PUNCT = set(".?!,:;-'`\"()[]{}…")


def _python_tokenize(sentence: str) -> str:
    """Lower-case words, punctuation dropped (an approximation of PTB + pycocoevalcap)."""
    tokens = _PY_TOKEN.findall(sentence.lower())
    return " ".join(t for t in tokens if t not in _PY_PUNCT)


# ----------------------------------------------------------------------------- METEOR


def _meteor(gts: dict, res: dict, ids: list, java: str, timeout_s: float):
    """METEOR 1.5 through pycocoevalcap's jar, -stdio protocol, with a deadline."""
    from pycocoevalcap.meteor import meteor as meteor_module

    folder = Path(meteor_module.__file__).parent
    cmd = [java, "-jar", "-Xmx2G", meteor_module.METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"]
    proc = subprocess.Popen(cmd, cwd=folder, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    lines: "queue.Queue[bytes]" = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True)
    reader.start()
    deadline = _Deadline(timeout_s)

    def clean(text: str) -> str:
        return text.replace("|||", "").replace("  ", " ")

    def read_line() -> str:
        while True:
            try:
                return lines.get(timeout=min(1.0, deadline.left())).decode().strip()
            except queue.Empty:
                if proc.poll() is not None and lines.empty():
                    raise RuntimeError(f"METEOR exited with status {proc.returncode}") from None
                if deadline.left() <= 0:
                    raise RuntimeError(f"METEOR gave no answer within {timeout_s:.0f} s") from None

    try:
        stats = []
        for i in ids:
            proc.stdin.write(("SCORE ||| " + " ||| ".join(clean(r) for r in gts[i]) + " ||| "
                              + clean(res[i][0]) + "\n").encode("utf-8"))
            proc.stdin.flush()
            stats.append(read_line())
        proc.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode("utf-8"))
        proc.stdin.flush()
        scores = [float(read_line()) for _ in ids]
        score = float(read_line())
    except (BrokenPipeError, ValueError) as exc:
        raise RuntimeError(f"METEOR process failed ({exc})") from None
    finally:
        proc.kill()
        proc.wait()
    return score, scores


class _Deadline:
    def __init__(self, seconds: float) -> None:
        import time

        self._time = time.monotonic
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self._end - self._time())


# ----------------------------------------------------------------------------- SPICE

SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def spice_lib_dir() -> Path:
    """Where pycocoevalcap's SPICE looks for its CoreNLP jars."""
    import pycocoevalcap.spice  # a namespace package above it has no __file__

    return Path(pycocoevalcap.spice.__file__).parent / "lib"


def spice_missing_files() -> list[str]:
    """The SPICE files that are not installed (empty: SPICE can run offline)."""
    lib = spice_lib_dir()
    missing = [name for name in SPICE_JARS if not (lib / name).is_file()]
    if not (lib.parent / "spice-1.0.jar").is_file():
        missing.append("spice-1.0.jar")
    return missing


def _spice(gts: dict, res: dict, ids: list, java: str, timeout_s: float):
    """SPICE 1.0 (pycocoevalcap's jar), run in a temporary folder with a timeout."""
    jar = spice_lib_dir().parent / "spice-1.0.jar"
    data = [{"image_id": k, "test": res[i][0], "refs": gts[i]} for k, i in enumerate(ids)]
    with tempfile.TemporaryDirectory(prefix="vlm-spice-") as tmp:
        in_file, out_file = Path(tmp) / "in.json", Path(tmp) / "out.json"
        in_file.write_text(json.dumps(data))
        cmd = [java, "-jar", "-Xmx8G", str(jar), str(in_file), "-cache", str(Path(tmp) / "cache"),
               "-out", str(out_file), "-subset", "-silent"]
        proc = subprocess.run(cmd, cwd=jar.parent, capture_output=True, timeout=timeout_s, check=False)
        if proc.returncode != 0 or not out_file.is_file():
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"SPICE exited with status {proc.returncode}: {tail[0][:200]}")
        results = json.loads(out_file.read_text())
    by_index = {item["image_id"]: item["scores"]["All"]["f"] for item in results}
    scores = [_float(by_index.get(k)) for k in range(len(ids))]
    finite = [s for s in scores if s == s]
    if not finite:
        raise RuntimeError("SPICE returned no scores")
    return sum(finite) / len(finite), scores


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


# ----------------------------------------------------------------------------- command line


def main(argv: Optional[list[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vlm.evaluation.captioning",
                                     description="COCO caption metrics for {id: caption} JSON files.")
    parser.add_argument("references", help='JSON {"id": ["reference", ...]}')
    parser.add_argument("candidates", help='JSON {"id": "candidate"}')
    parser.add_argument("--no-spice", action="store_true")
    args = parser.parse_args(argv)
    try:
        refs = json.loads(Path(args.references).read_text())
        cands = json.loads(Path(args.candidates).read_text())
        report = evaluate_captions(refs, cands, spice=not args.no_spice)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "CaptionReport",
    "METRIC_NAMES",
    "caption_metrics",
    "evaluate_captions",
    "spice_lib_dir",
    "spice_missing_files",
]
