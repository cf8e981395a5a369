"""The `vlm` command's surface as a real subprocess (issue 13 items 3, 13-19; issue 9 items 4, 8).

Every refusal is one line on stderr naming the input and the reason, exit 2 for usage errors,
exit 1 when some inputs failed, and never a traceback.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
from dataclasses import fields

import pytest
from PIL import Image

from conftest import REPO, read_terminal, run_vlm


def _one_line(proc, *words, code=2):
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_caption_flags_are_derived_from_generation_config():
    """Every GenerationConfig field is a flag of `vlm caption` with the same default; evaluate and
    explain take their subset with the same defaults (one default, written once)."""
    from vlm.cli import caption, evaluate, explain
    from vlm.generation.config import GenerationConfig

    def flags(parser):
        return {a.dest: a for a in parser._actions if a.option_strings}

    want = {f.name: f.default for f in fields(GenerationConfig)}
    got = flags(caption.build_parser())
    for name, default in want.items():
        assert name in got and got[name].default == default, name
        assert got[name].option_strings[0] == "--" + name.replace("_", "-")
    assert "length_penalty" in got
    for module, subset in ((evaluate, ("beams", "max_tokens")), (explain, ("max_tokens",))):
        got = flags(module.build_parser())
        assert all(got[name].default == want[name] for name in subset)


@pytest.mark.parametrize("args, words", [
    (["--repetition-penalty", "0"], "--repetition-penalty 0.0: must be at least 0.1"),
    (["--repetition-penalty", "-1"], "--repetition-penalty -1.0: must be at least 0.1"),
    (["--temperature", "inf"], "--temperature inf: must be a finite number"),
    (["--temperature", "nan", "--top-k", "3"], "--temperature nan: must be a finite number"),
    # finite but past any use: they used to end in nan probabilities or an OverflowError
    (["--top-p", "0.9", "--temperature", "1e-300"], "--temperature 1e-300: must be at least 0.01"),
    (["--top-k", "5", "--temperature", "1e308"], "--temperature 1e+308: must be at most 100"),
    (["--top-p", "0.9", "--repetition-penalty", "1e-300"], "--repetition-penalty 1e-300: must be at least 0.1"),
    (["--repetition-penalty", "1e9"], "--repetition-penalty 1000000000.0: must be at most 10"),
    (["--beams", "3", "--length-penalty", "1e308"], "--length-penalty 1e+308: must be at most 10"),
    (["--beams", "3", "--length-penalty", "-11"], "--length-penalty -11.0: must be at least -10"),
    (["--top-p", "1.5"], "--top-p 1.5: must be at most 1"),
    (["--beams", "2", "--top-p", "0.9"], "--beams 2: beam search cannot be combined"),
    (["--length-penalty", "nan"], "--length-penalty nan"),
    (["--max-tokens", "100000"], "--max-tokens 100000: must be at most 1024"),
    (["--beams", "1000"], "--beams 1000: must be at most 64"),
    (["--image-size", "64000"], "--image-size 64000: must be at most 8192"),
    (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--batch-size", "100000"], "--batch-size 100000: must be at most 4096"),
    (["--image-size", "8192", "--batch-size", "4096"], "--batch-size 4096: at image size 8192 needs about"),
])
def test_options_that_cannot_work_or_fit_are_refused_in_one_line(tiny_checkpoint, sample_images, args, words):
    proc = run_vlm("caption", sample_images["good"], "--model", tiny_checkpoint, *args, timeout=60)
    _one_line(proc, words)
    assert proc.stdout == ""


def test_help_states_the_limits():
    out = run_vlm("caption", "--help").stdout
    for words in ("at most 8192", "1..4096", "1..64", "1..1024", "must fit in", "memory",
                  "--temperature X sampling temperature (0.01: all but greedy; 100: all but uniform) (0.01..100;",
                  "them (CTRL); 1 is off (0.1..10;", "(-10..10; default 1.0)"):
        assert words in " ".join(out.split()), words


def test_broken_pipe_and_stdin(tiny_checkpoint, sample_images, tmp_path):
    many = tmp_path / "many"
    many.mkdir()
    for i in range(30):
        shutil.copy(sample_images["good"], many / f"{i:02d}.png")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("VLM_DEBUG", None)
    cmd = [sys.executable, "-m", "vlm.cli.main", "caption", str(many), "--model", str(tiny_checkpoint),
           "--max-tokens", "2", "--batch-size", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env)
    first = proc.stdout.readline()  # like `| head -1`: read one line, then go away
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert first.startswith(str(many / "00.png").encode())
    assert err == "" and proc.returncode == 141, err  # quiet, 128 + SIGPIPE like cat
    assert "141 the reader of the output went away" in (REPO / "README.md").read_text()  # a documented status
    # `cat img | vlm caption /dev/stdin`
    with open(sample_images["good"], "rb") as fh:
        piped = subprocess.run([sys.executable, "-m", "vlm.cli.main", "caption", "/dev/stdin", "--model",
                                str(tiny_checkpoint), "--max-tokens", "2"], stdin=fh, capture_output=True,
                               text=True, cwd=REPO, env=env, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.startswith("/dev/stdin: ")
    empty = subprocess.run([sys.executable, "-m", "vlm.cli.main", "caption", "/dev/stdin", "--model",
                            str(tiny_checkpoint)], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           cwd=REPO, env=env, timeout=120)
    _one_line(empty, "/dev/stdin", "no data", code=1)


def test_symlink_loops_and_dangling_links_are_reported(tiny_checkpoint, sample_images, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    shutil.copy(sample_images["good"], d / "ok.png")
    os.symlink("loop_b.png", d / "loop_a.png")
    os.symlink("loop_a.png", d / "loop_b.png")
    os.symlink("gone.png", d / "dangling.png")
    proc = run_vlm("caption", d, d / "loop_a.png", "--model", tiny_checkpoint, "--max-tokens", "2", "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    objs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["image"] for o in objs if "caption" in o] == [str(d / "ok.png")]
    errors = {o["image"]: o["error"] for o in objs if "error" in o}
    assert "symbolic link loop" in errors[str(d / "loop_a.png")]
    assert "symbolic link loop" in errors[str(d / "loop_b.png")]
    assert "broken symbolic link" in errors[str(d / "dangling.png")]
    assert len(proc.stderr.strip().splitlines()) == 4  # loop_a twice (in the dir and explicitly), loop_b, dangling
    assert "no such file" not in proc.stderr


@pytest.mark.parametrize("template", ["a {} {}", "a {name} {}", "a {} }", "a {0}"])
def test_classify_bad_templates_are_one_line(tiny_checkpoint, sample_images, template):
    proc = run_vlm("classify", sample_images["good"], "--labels", "a,b", "--template", template,
                   "--model", tiny_checkpoint)
    _one_line(proc, "--template", "must contain {} once")


def test_classify_labels_files_and_label_rules(tiny_checkpoint, sample_images, tmp_path):
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffred square\ngreen square\n".encode("utf-8"))
    proc = run_vlm("classify", sample_images["good"], "--labels-file", bom, "--model", tiny_checkpoint, "--json")
    assert proc.returncode == 0, proc.stderr
    assert {t["label"] for t in json.loads(proc.stdout)["top"]} == {"red square", "green square"}
    binary = tmp_path / "labels.bin"
    binary.write_bytes((sample_images["good"]).read_bytes())
    _one_line(run_vlm("classify", sample_images["good"], "--labels-file", binary, "--model", tiny_checkpoint),
              f"--labels-file {binary}: not a UTF-8 text file")
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"cat\x00dog\n")
    _one_line(run_vlm("classify", sample_images["good"], "--labels-file", nul, "--model", tiny_checkpoint),
              "not a text file")
    _one_line(run_vlm("classify", sample_images["good"], "--labels", "cat,dog,cat", "--model", tiny_checkpoint),
              "--labels: 'cat' is given twice")
    dup = tmp_path / "dup.txt"
    dup.write_text("cat\ndog\n cat\n")
    _one_line(run_vlm("classify", sample_images["good"], "--labels-file", dup, "--model", tiny_checkpoint),
              f"--labels-file {dup}: 'cat' is given twice")
    _one_line(run_vlm("classify", sample_images["good"], "--labels", "cat,,dog", "--model", tiny_checkpoint),
              "--labels: label 1 of 3 is blank")


def test_similarity_plot_path_checked_before_any_work(tiny_checkpoint, sample_images, tmp_path):
    base = ["similarity", "--images", sample_images["good"], "--texts", "a red image", "--model", tiny_checkpoint]
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for plot, words in [(tmp_path, "is a directory"), (blocker / "sim.png", f"{blocker} is not a directory"),
                        (blocker / "sub" / "sim.png", f"{blocker} is not a directory"),
                        (tmp_path / "missing_dir" / "sim.png", "no such directory"),
                        (tmp_path / "sim.bogus", "unknown figure format 'bogus'")]:
        proc = run_vlm(*base, "--plot", plot)
        _one_line(proc, f"--plot {plot}", words)
        assert proc.stdout == ""  # refused before the matrix was computed
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        _one_line(run_vlm(*base, "--plot", ro / "sim.png"), "cannot write")
    bare = tmp_path / "heatmap"
    proc = run_vlm(*base, "--plot", bare)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {bare}" in proc.stderr and not (tmp_path / "heatmap.png").exists()
    with Image.open(bare) as im:
        assert im.format == "PNG"
    assert (tmp_path / "heatmap").stat().st_size > 0


def test_similarity_reports_bad_images_through_reporter(tiny_checkpoint, sample_images):
    proc = run_vlm("similarity", "--images", sample_images["good"], sample_images["missing"], "--texts", "a",
                   "--model", tiny_checkpoint, "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["images"] == [str(sample_images["good"])]  # still one JSON object
    _one_line(proc, "vlm similarity: error:", str(sample_images["missing"]), "no such file", code=1)


def test_evaluate_exits_1_when_images_are_missing_and_hints_the_coco_split(tiny_checkpoint, tmp_path):
    from vlm.data.shapes_dir import generate_shapes

    data = generate_shapes(tmp_path / "shapes", n=6, seed=3)
    for i in (1, 2, 3):
        (data / "images" / f"{i:06d}.png").unlink()
    proc = run_vlm("evaluate", "--model", tiny_checkpoint, "--data", data, "--no-spice", "--no-meteor",
                   "--max-tokens", "3", "--json")
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["num_images"] == 3
    assert "3 of 6 images could not be read" in proc.stderr and "Traceback" not in proc.stderr
    # each unreadable image is one line worded as vlm caption words a failed input
    for i in (1, 2, 3):
        assert f"vlm evaluate: error: {data / 'images' / f'{i:06d}.png'}: no such file or directory\n" in proc.stderr
    assert all(line.startswith("vlm evaluate: ") for line in proc.stderr.splitlines()), proc.stderr
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    shutil.copy(data / "annotations" / "captions.json", root / "annotations" / "captions_val2017.json")
    _one_line(run_vlm("evaluate", "--model", tiny_checkpoint, "--data", root),
              "a COCO root with the splits val: pass --split val")


def test_data_shapes_uses_the_cli_parser_and_replaces_an_earlier_dataset(tmp_path):
    _one_line(run_vlm("data", "shapes", "--n", "x"), "vlm data shapes: error:", "invalid int value")
    _one_line(run_vlm("data"), "vlm data: error:")
    _one_line(run_vlm("data", "frob"), "invalid choice: 'frob'")
    assert "--image-size" in run_vlm("data", "shapes", "--help").stdout
    out = tmp_path / "shapes"
    assert run_vlm("data", "shapes", "--out", out, "--n", "12", "--seed", "0").returncode == 0
    proc = run_vlm("data", "shapes", "--out", out, "--n", "4", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:06d}.png" for i in range(1, 5)]
    from vlm.data.shapes_dir import generate_shapes

    fresh = generate_shapes(tmp_path / "fresh", n=4, seed=1)
    for i in range(1, 5):
        name = f"images/{i:06d}.png"
        assert (out / name).read_bytes() == (fresh / name).read_bytes()
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    (other / "images" / "mine.png").write_bytes(b"x")
    _one_line(run_vlm("data", "shapes", "--out", other, "--n", "2", "--seed", "0"),
              f"--out {other}", "no annotations/captions.json")
    assert (other / "images" / "mine.png").exists()


def _files(root):
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def test_data_shapes_rewrite_replaces_the_earlier_dataset_of_either_layout(tmp_path):
    """A rewrite leaves exactly the new dataset, whichever layout wrote the old one; a class folder
    holding a file vlm did not write is refused in one line and kept (issue 13 item 18)."""
    from vlm.classify.shapes import generate_class_folders
    from vlm.data.shapes_dir import generate_shapes

    out = tmp_path / "d"
    classes = ["--layout", "classes", "--classes"]
    assert run_vlm("data", "shapes", "--out", out, "--n", "40", "--seed", "1", *classes, "10").returncode == 0
    assert run_vlm("data", "shapes", "--out", out, "--n", "6", "--seed", "2", *classes, "3").returncode == 0
    assert _files(out) == _files(generate_class_folders(tmp_path / "fresh_cls", n=6, seed=2, classes=3))
    assert run_vlm("data", "shapes", "--out", out, "--n", "5", "--seed", "3").returncode == 0  # classes -> coco
    assert _files(out) == _files(generate_shapes(tmp_path / "fresh_coco", n=5, seed=3))
    assert run_vlm("data", "shapes", "--out", out, "--n", "4", "--seed", "4", *classes, "2").returncode == 0
    assert _files(out) == _files(generate_class_folders(tmp_path / "fresh_cls2", n=4, seed=4, classes=2))
    mine = out / "red circle" / "mine.jpg"
    mine.write_bytes(b"x")
    _one_line(run_vlm("data", "shapes", "--out", out, "--n", "2", "--seed", "0"),
              f"vlm data shapes: error: --out {out}: {mine} is not from vlm data shapes")
    assert mine.exists()
    _one_line(run_vlm("data", "shapes", "--out", tmp_path / "x", "--n", "0", "--seed", "1"),
              "vlm data shapes: error: --n 0: must be a positive integer")
    _one_line(run_vlm("data", "shapes", "--out", tmp_path / "x", "--n", "3", "--seed", "1", *classes, "30"),
              "vlm data shapes: error: --classes 30: must be between 2 and 24")


def _run_on_a_terminal(args, timeout=120) -> str:
    """Run `vlm ARGS` with stderr on a pseudo-terminal; returns what the terminal showed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a real terminal's size
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vlm.cli.main", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=slave, cwd=REPO, env=env)
    os.close(slave)
    shown = read_terminal(master, timeout)
    proc.wait(timeout=timeout)
    os.close(master)
    assert proc.returncode in (0, 1), shown
    return shown.decode(errors="replace")


def test_long_work_shows_a_progress_bar_on_a_terminal(tiny_checkpoint, tmp_path):
    shown = _run_on_a_terminal(["data", "shapes", "--out", tmp_path / "s", "--n", "40", "--seed", "0"])
    assert "vlm data shapes:" in shown and "0/40" in shown and "img/s" in shown
    shown = _run_on_a_terminal(["evaluate", "--model", tiny_checkpoint, "--data", tmp_path / "s", "--no-spice",
                                "--no-meteor", "--max-tokens", "2", "--batch-size", "8"])
    assert "vlm evaluate:" in shown and "/40" in shown
    assert "it/s" not in run_vlm("data", "shapes", "--out", tmp_path / "t", "--n", "3", "--seed", "0").stderr


def test_classifier_work_shows_a_progress_bar_on_a_terminal(tmp_path):
    from vlm.classify.shapes import generate_class_folders

    train, val = tmp_path / "train", tmp_path / "val"
    shown = _run_on_a_terminal(["data", "shapes", "--layout", "classes", "--out", train, "--n", "24", "--seed", "0",
                                "--classes", "2"])
    assert "vlm data shapes:" in shown and "0/24" in shown and "img/s" in shown
    generate_class_folders(val, n=12, seed=1, classes=2)
    shown = _run_on_a_terminal(["probe", "--train", train, "--val", val, "--cache", "", "--out", tmp_path / "clf",
                                "--batch-size", "8"])
    assert "vlm probe (train):" in shown and "/24" in shown and "vlm probe (val):" in shown and "/12" in shown
    shown = _run_on_a_terminal(["evaluate", "--model", tmp_path / "clf", "--data", val, "--batch-size", "4"])
    assert "vlm evaluate:" in shown and "/12" in shown
    r = run_vlm("data", "shapes", "--layout", "classes", "--out", tmp_path / "quiet", "--n", "6", "--seed", "0")
    assert r.returncode == 0 and r.stderr == "", r.stderr  # no terminal: no bar


def test_readme_flag_table_agrees_with_every_command():
    """README's "command | model flags" table: each command's --help has exactly the model flags the
    table gives it, and every `vlm` command has a row."""
    import re

    from vlm.cli.main import COMMANDS

    text = (REPO / "README.md").read_text()
    rows = re.findall(r"^\| ([a-z, -]+) \| (.+) \|$", text, re.M)
    table = {}
    for commands, flags in rows:
        if commands.strip() == "command":
            continue
        for name in commands.split(","):
            table[name.strip()] = set(re.findall(r"`(--[a-z-]+)`", flags.split("(")[0] if "none" in flags else flags))
    assert set(COMMANDS) <= set(table), f"commands missing from the README table: {set(COMMANDS) - set(table)}"
    model_flags = {"--model", "--pretrained", "--device", "--image-size", "--batch-size", "--json"}
    for name, flags in table.items():
        shown = set(re.findall(r"--[a-z-]+", run_vlm(name, "--help").stdout)) & model_flags
        assert shown == flags, (name, shown, flags)
    # the sentence above the table names the model flags and claims no command takes them all
    intro = text[text.index("## Using it"):text.index("| command | model flags |")]
    assert set(re.findall(r"`(--[a-z-]+)", intro)) == model_flags == set().union(*table.values()), intro
    assert "the table says which of them each command takes" in " ".join(intro.split()), intro
