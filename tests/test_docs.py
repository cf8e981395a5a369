"""Every command block in README.md and docs/*.md runs as written, in one fresh clone (issue 13 item 9).

The blocks are found, not listed: any ``bash``/``sh``/``shell``/``console`` or ``python`` fence
in README.md or a file under docs/ is covered, so a new document is tested the day it lands.

- The tracked (and new, not ignored) files are copied to a temporary directory: one fresh clone for
  all documents, as a user has one folder (issue 18). The documents run in sequence there, README.md
  first, then docs/*.md by name, each block in order, one shell per block: a later block sees what
  every earlier one made (the README trains ``runs/shapes_tiny``, then evaluates it; docs/classification.md
  then probes into the folder the README's probe wrote). Testing one document runs the documents
  before it first.
- ``REDUCE`` below is the whole list of changes made before running: smaller sizes and step
  counts, the running environment linked as ``.venv`` (installing needs the network), and the
  test suite itself cut to one file. Nothing else is rewritten.
- ``READER_FILES`` are the files a reader is assumed to bring (``photo.jpg``, ``img/``,
  ``labels.txt``); the test makes them from the bundled examples.
- ``console`` blocks are transcripts: each ``$ COMMAND`` runs and its stdout must equal the
  lines shown below it.
- A block after ``<!-- doc-test: skip (REASON) -->`` needs what a test cannot have (GPUs, the
  Hub, COCO, hours); it is still checked: bash syntax, each ``vlm`` command parsed by that
  command's own argument parser, each training ``--config`` file present.
- ``text`` fences are synopses and file listings, not commands.

Run: pytest -q tests/test_docs.py
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO

SHELL_LANGS = {"bash", "sh", "shell"}
SKIP = re.compile(r"<!--\s*doc-test:\s*skip\s*\((.+?)\)\s*-->")

#: (pattern, replacement) applied to every shell block before it runs: reduced sizes only.
REDUCE = [
    (r'python3 -m venv \.venv && \.venv/bin/pip install -e "\.\[test\]"', "ln -s {prefix} .venv"),
    (r"(\.venv/bin/python -m pytest -q)$", r"\1 tests/test_images.py"),
    (r"--n 30000\b", "--n 48"),
    (r"--n 1000\b", "--n 16"),
    (r"(accelerate launch .*--config configs/shapes_tiny\.yaml)$",
     r"\1 steps=2 warmup_steps=1 data.batch_size=8 data.val_images=8 log_every=1 eval_every=2 save_every=2"),
    (r"(scripts/train\.py --config configs/micro\.yaml)$", r"\1 steps=2"),
    (r"(accelerate launch scripts/train\.py --config configs/classify_shapes\.yaml)$",
     r"\1 steps=4 warmup_steps=1 eval_every=2 save_every=2"),
    (r"^(python benchmarks/digits\.py .*)$", r"\1 --steps 4"),
    (r"^(vlm evaluate .*)$", r"\1 --no-spice --no-meteor"),
]


@dataclass
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    skip: str | None = None  # the reason given in a doc-test: skip marker

    def __str__(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def blocks(doc: Path) -> list[Block]:
    lines = doc.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        indent, lang = len(m.group(1)), m.group(2)
        j = i + 1
        while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
            j += 1
        prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        skip = SKIP.search(prev)
        body = "\n".join(line[indent:] for line in lines[i + 1:j])
        out.append(Block(doc, i + 1, lang, body, skip.group(1) if skip else None))
        i = j + 1
    return out


def reduce(text: str) -> str:
    lines = []
    for line in text.splitlines():
        for pattern, repl in REDUCE:
            line = re.sub(pattern, repl.replace("{prefix}", sys.prefix), line)
        lines.append(line)
    return "\n".join(lines)


def fresh_clone(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def make_reader_files(clone: Path) -> None:
    """What a reader brings: a photo, a folder of images, a labels file."""
    from PIL import Image

    examples = sorted((clone / "examples").glob("*.png"))
    with Image.open(examples[0]) as im:
        im.convert("RGB").save(clone / "photo.jpg")
    (clone / "img").mkdir()
    for p in examples:
        shutil.copy(p, clone / "img" / p.name)
    (clone / "labels.txt").write_text("red star\norange star\nblue triangle\n")


READER_FILES = ("photo.jpg", "img/", "labels.txt")


def environment(clone: Path, home: Path) -> dict:
    """An activated environment, as the README asks for: this interpreter's bin/ first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "VLM_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(clone),
               HOME=str(home), HF_HOME=str(home / "hf"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    return env


def shell_commands(text: str) -> list[list[str]]:
    """The simple commands of a shell block: continuation lines joined, comments dropped, split at
    ``&&``, ``;``, ``|`` and redirections, leading ``VAR=value``, ``nohup`` and ``nice -n N`` removed."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        cmd: list[str] = []
        skip_next = False
        for w in shlex.split(line, comments=True) + ["&&"]:
            if skip_next:  # the file of a redirection
                skip_next = False
            elif w in ("&&", ";", "|", "||"):
                while cmd and (re.match(r"^[A-Za-z_]+=", cmd[0]) or cmd[0] == "nohup"):
                    cmd = cmd[1:]
                if cmd[:2] == ["nice", "-n"]:
                    cmd = cmd[3:]
                if cmd:
                    out.append(cmd)
                cmd = []
            elif re.match(r"^\d?>", w):  # >, 2>, 2>&1, >file
                skip_next = w in (">", "2>", ">>")
            else:
                cmd.append(w)
    return out


def check_without_running(block: Block) -> None:
    """A block that cannot run here: bash syntax, each vlm command parsed by its own parser,
    each training config present."""
    import importlib

    from vlm.cli.main import COMMANDS

    syntax = subprocess.run(["bash", "-n"], input=block.text, text=True, capture_output=True)
    assert syntax.returncode == 0, f"{block}: {syntax.stderr}"
    for cmd in shell_commands(block.text):
        if cmd[0] == "vlm":
            name, argv = cmd[1], cmd[2:]
            assert name in COMMANDS, f"{block}: vlm {name}: no such command"
            module = importlib.import_module(COMMANDS[name][0])
            if hasattr(module, "build_parser"):
                try:
                    module.build_parser().parse_args(argv)
                except SystemExit:
                    pytest.fail(f"{block}: vlm {shlex.join(cmd[1:])}: rejected by the argument parser")
        elif cmd[:2] == ["accelerate", "launch"] and "--config" in cmd:
            config = cmd[cmd.index("--config") + 1]
            assert (REPO / config).is_file(), f"{block}: --config {config}: no such file"


def test_every_document_block_is_runnable_or_says_why_not():
    """The block inventory: a shell/python/console fence is run; a skip marker gives a reason; a
    fence without a language is a mistake (say ``text`` for a listing)."""
    found = [b for doc in documents() for b in blocks(doc)]
    assert found, "no blocks found"
    untyped = [str(b) for b in found if not b.lang]
    assert not untyped, f"fences without a language (use ```text for listings): {untyped}"
    for b in found:
        if b.skip:
            assert b.lang in SHELL_LANGS, f"{b}: a skip marker on a {b.lang} block"
            assert len(b.skip) > 8, f"{b}: say why the block cannot run"


def test_skipped_blocks_still_parse():
    for doc in documents():
        for b in blocks(doc):
            if b.skip:
                check_without_running(b)


def _run_shell(block: Block, clone: Path, env: dict) -> None:
    script = "set -euo pipefail\n" + reduce(block.text)
    proc = subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (f"{block} failed (exit {proc.returncode}):\n{script}\n--- stdout\n"
                                  f"{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}")


def _run_python(block: Block, clone: Path, env: dict) -> None:
    proc = subprocess.run([sys.executable, "-c", block.text], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{block} failed:\n{proc.stderr[-5000:]}"


def _run_transcript(block: Block, clone: Path, env: dict) -> None:
    lines = block.text.splitlines()
    starts = [n for n, line in enumerate(lines) if line.startswith("$ ")]
    assert starts, f"{block}: a console block shows `$ COMMAND` lines and their output"
    for k, n in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(lines)
        proc = subprocess.run(["bash", "-c", lines[n][2:]], cwd=clone, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{block}: {lines[n]}: {proc.stderr[-3000:]}"
        assert proc.stdout.splitlines() == lines[n + 1:end], f"{block}: {lines[n]} prints something else"


def _run_document(doc: Path, clone: Path, env: dict) -> int:
    ran = 0
    for b in blocks(doc):
        if b.skip or b.lang not in SHELL_LANGS | {"python", "console"}:
            continue
        {"python": _run_python, "console": _run_transcript}.get(b.lang, _run_shell)(b, clone, env)
        ran += 1
    return ran


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    """One fresh clone and home for every document, and the documents already run in it."""
    root = tmp_path_factory.mktemp("docs")
    clone = fresh_clone(root / "clone")
    home = root / "home"
    home.mkdir()
    make_reader_files(clone)
    return {"clone": clone, "env": environment(clone, home), "done": set()}


@pytest.mark.slow
@pytest.mark.parametrize("doc", documents(), ids=lambda d: str(d.relative_to(REPO)))
def test_document_blocks_run_in_sequence_in_one_folder(doc, user_folder):
    """The documents in sequence in one folder, as a user reads them: this one after every document
    before it (run here first when this test runs alone), its blocks in order."""
    clone, env, done = user_folder["clone"], user_folder["env"], user_folder["done"]
    for earlier in documents()[:documents().index(doc)]:
        if earlier not in done:
            done.add(earlier)
            try:
                _run_document(earlier, clone, env)
            except AssertionError as e:
                pytest.fail(f"{earlier.relative_to(REPO)}, run before {doc.relative_to(REPO)}, failed: {e}")
    done.add(doc)
    ran = _run_document(doc, clone, env)
    if doc.name == "README.md":
        assert ran >= 6
        assert (clone / "runs" / "shapes_tiny" / "model" / "config.json").is_file()  # the training block ran
