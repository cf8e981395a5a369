"""Training under a launcher, as real processes (issue 13 items 8 and 11).

- ``vlm train`` (Accelerate's own launch API) exits with training's status: 2 for a bad config,
  data path, ``resume`` or ``--multi_gpu`` without GPUs (before anything is launched), 2 and 1 for
  failures inside the training processes, 0 when done; one line on stderr, no launcher report.
- plain ``accelerate launch scripts/train.py``: the one line is printed once, by the main
  process; the launcher's own status is 1 (what docs/training.md says holds there).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ForkServer, read_terminal, run_python
from vlm.data.shapes_dir import generate_shapes

ROOT = Path(__file__).resolve().parents[1]
MICRO = str(ROOT / "configs" / "micro.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ENV.pop("ACCELERATE_USE_CPU", None)
ENV.pop("VLM_DEBUG", None)
LAUNCHER_REPORTS = ("Traceback", "CalledProcessError", "ChildFailedError", "exitcode", "elastic")
TWO = ["--cpu", "--num_processes", "2"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("shapes") / "train", 32, seed=3)


def vlm_train(*args, env=None, timeout=240) -> subprocess.CompletedProcess:
    """`vlm train` as a real process (forked from a warm interpreter: conftest.run_python; its launcher's
    training processes are fresh ones)."""
    return run_python(["-m", "vlm.cli.main", "train", "--config", MICRO, *map(str, args)], env={**ENV, **(env or {})},
                      cwd=ROOT, timeout=timeout, preload=ForkServer.TRAIN_PRELOAD)


def error_lines(proc) -> list[str]:
    """stderr without the progress bar (tqdm draws on stderr)."""
    return [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("train:")]


def one_line(proc, code: int, *words) -> str:
    for report in LAUNCHER_REPORTS:
        assert report not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("vlm train: error: "), lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("procs", [[], TWO], ids=["1-process", "2-processes"])
@pytest.mark.parametrize("override, words", [
    ("steps=0", "steps=0: must be at least 1"),
    ("no_such_key=1", "unknown key no_such_key"),
    ("data.root=DATA/missing", "data.root=DATA/missing: no such dataset directory"),
    ("resume=latest", "resume=latest: no checkpoint under"),
])
def test_bad_config_or_data_is_exit_2_before_anything_launches(shapes, tmp_path, procs, override, words):
    override, words = (s.replace("DATA", str(tmp_path)) for s in (override, words))
    r = vlm_train(f"data.root={shapes}", f"output_dir={tmp_path / 'run'}", override, *procs)
    one_line(r, 2, words)
    assert not (tmp_path / "run").exists()


def test_multi_gpu_without_gpus_is_one_line(shapes, tmp_path):
    r = vlm_train(f"data.root={shapes}", f"output_dir={tmp_path}", "--multi_gpu", "--num_processes", "2",
                  env={"CUDA_VISIBLE_DEVICES": ""})
    if "no GPU" not in r.stderr:
        pytest.skip("this machine has GPUs")
    one_line(r, 2, "--multi_gpu: this machine has no GPU", "--cpu --num_processes 2")


def test_launch_option_errors_are_one_line(shapes, tmp_path):
    common = [f"data.root={shapes}", f"output_dir={tmp_path}"]
    one_line(vlm_train(*common, "--no-such-launch-flag"), 2, "unrecognized arguments: --no-such-launch-flag")
    one_line(vlm_train(*common, "steps"), 2, "steps: neither a key=value override nor an accelerate launch option")


@pytest.mark.slow
@pytest.mark.parametrize("procs", [[], TWO], ids=["1-process", "2-processes"])
def test_failures_inside_the_training_processes_keep_their_status(shapes, tmp_path, procs):
    # a non-finite loss at step 2: exit 1, the step named once (every process stops together)
    r = vlm_train(f"data.root={shapes}", f"output_dir={tmp_path / 'nan'}", "steps=4", "data.batch_size=8",
                  "debug_nan_at_step=2", *procs)
    one_line(r, 1, "non-finite loss at step 2")
    # data found to be too small once the loaders are built, inside the processes: exit 2
    r = vlm_train(f"data.root={shapes}", f"output_dir={tmp_path / 'big'}", "data.batch_size=1000", *procs)
    one_line(r, 2, "fewer than one batch of 1000")


@pytest.mark.slow
def test_two_cpu_processes_train_and_exit_0(shapes, tmp_path):
    r = vlm_train(f"data.root={shapes}", f"output_dir={tmp_path}", "steps=2", "data.batch_size=8", *TWO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 processes, MULTI_CPU, device cpu" in r.stdout, r.stdout[-2000:]
    assert "finished at step 2" in r.stdout and (tmp_path / "model" / "model.safetensors").is_file()
    assert error_lines(r) == [], r.stderr[-3000:]


@pytest.mark.parametrize("launcher", [
    ["--cpu", "--num_processes", "1"],
    ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
     "--dynamo_backend", "no"],
], ids=["simple", "torchrun"])
@pytest.mark.slow
def test_plain_accelerate_launch_prints_the_line_once_and_exits_1(shapes, tmp_path, launcher):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher, str(ROOT / "scripts" / "train.py"),
           "--config", MICRO, f"data.root={shapes}", f"output_dir={tmp_path}", "steps=0"]
    r = subprocess.run(cmd, cwd=ROOT, env={**ENV, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True,
                       timeout=240)
    ours = [line for line in r.stderr.splitlines() if line.startswith("train.py: error:")]
    assert ours == ["train.py: error: override steps=0: steps=0: must be at least 1"], r.stderr[-3000:]
    assert r.returncode == 1  # Accelerate's launcher reports any failing child as 1 (docs/training.md)


def test_only_a_launched_process_watches_its_parent():
    code = "from vlm.training.parent_watch import watch_parent; print(watch_parent() is not None)"
    run = lambda env: subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**ENV, **env},  # noqa: E731
                                     capture_output=True, text=True, timeout=60).stdout.strip()
    assert run({}) == "False"  # started from a shell or a test: nohup-style runs are left alone
    assert run({"VLM_LAUNCHER_PID": str(os.getpid())}) == "True"  # `vlm train` names itself


def _checkpoint_written(out: Path) -> bool:
    return any((out / "checkpoints").glob("step_*/trainer_state.json"))


@pytest.mark.parametrize("launcher", [
    ["--cpu", "--num_processes", "1"],
    ["--multi_gpu", "--num_processes", "2"],
], ids=["1-process", "2-processes"])
@pytest.mark.slow
def test_kill_9_of_the_launcher_leaves_no_orphan_and_the_run_resumes(shapes, tmp_path, launcher):
    import time

    psutil = pytest.importorskip("psutil")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "scripts" / "train.py"),
           "--config", MICRO, f"data.root={shapes}", f"output_dir={out}", "steps=60", "save_every=2",
           "data.batch_size=8"]
    env = {**ENV, "ACCELERATE_USE_CPU": "1"}
    log = tmp_path / "stderr.txt"  # a file, not a pipe: the children keep writing after the launcher died
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    trainers = []
    try:
        deadline = time.monotonic() + 180  # a bound for the wait, not a measurement
        while not _checkpoint_written(out):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.1)
        trainers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                    if any("train.py" in a for a in p.cmdline())]
        assert len(trainers) == (2 if "--multi_gpu" in launcher else 1), trainers
        # Accelerate >= 1.16's one-process launcher repeats the child's stderr through a pipe: with
        # the launcher gone, the child's line has nowhere to go (it still stops itself, below)
        to_log = all(os.readlink(f"/proc/{p.pid}/fd/2") == str(log) for p in trainers)
        proc.kill()  # SIGKILL: the launcher can pass nothing on
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs(trainers, timeout=20)
        assert not alive, f"orphaned training processes: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in trainers:  # nothing this test started outlives it, whatever failed
            if p.is_running():
                p.kill()
    assert not (out / "model").exists()  # stopped before the end
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    if to_log or "--multi_gpu" in launcher:  # torchrun's children write to the file themselves
        assert "the launcher (pid" in text, text[-3000:]  # they stopped themselves
    r = subprocess.run(cmd + ["resume=latest"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout and "finished at step 60" in r.stdout, r.stdout[-2000:]
    assert (out / "model" / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("procs", [[], TWO], ids=["1-process", "2-processes"])
def test_ctrl_c_stops_every_process_with_130_and_one_line(shapes, tmp_path, procs):
    import signal
    import time

    psutil = pytest.importorskip("psutil")
    out, log = tmp_path / "run", tmp_path / "stderr.txt"
    cmd = [sys.executable, "-m", "vlm.cli.main", "train", "--config", MICRO, f"data.root={shapes}",
           f"output_dir={out}", "steps=400", "save_every=2", "data.batch_size=8", *procs]
    # a session of its own: SIGINT goes to the whole process group, as Ctrl-C in a terminal does
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=log.open("w"),
                            start_new_session=True)
    trainers = []
    try:
        deadline = time.monotonic() + 180
        while not _checkpoint_written(out):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.1)
        trainers = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 130, log.read_text()[-3000:]
        gone, alive = psutil.wait_procs(trainers, timeout=20)
        assert not alive, alive
    finally:
        for p in [*trainers, psutil.Process(proc.pid) if proc.poll() is None else None]:
            if p is not None and p.is_running():
                p.kill()
    text = log.read_text().replace("\r", "\n")
    assert "Traceback" not in text and "SignalException" not in text, text[-3000:]
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("train:")]
    assert lines == ["vlm train: interrupted; continue from the last checkpoint with resume=latest"], text[-3000:]


@pytest.mark.slow
def test_plain_accelerate_launch_shows_training_progress_on_a_terminal(shapes, tmp_path):
    """Accelerate 1.16's one-process launcher pipes the child's stderr and relays it: on a terminal the
    training bar still shows (issue 18: it showed nothing), and with stderr in a file it does not."""
    import fcntl
    import pty
    import struct
    import termios

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
           str(ROOT / "scripts" / "train.py"), "--config", MICRO, f"data.root={shapes}", "steps=3",
           f"output_dir={tmp_path / 'run'}", "data.batch_size=8"]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    shown = b""
    try:
        shown = read_terminal(master, 240)
    finally:
        assert proc.wait(timeout=240) == 0, shown.decode(errors="replace")[-3000:]
        os.close(master)
    text = shown.decode(errors="replace")
    assert "train:" in text and "3/3" in text, text[-3000:]
    logged = subprocess.run(cmd[:-2] + [f"output_dir={tmp_path / 'run2'}", "data.batch_size=8"], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=240)
    assert logged.returncode == 0 and "train:" not in logged.stderr and "3/3" not in logged.stderr, logged.stderr
