"""``vlm train``: ``accelerate launch`` for ``vlm.training.cli``, with training's own exit status.

    vlm train --config configs/micro.yaml steps=50                          # one process
    vlm train --config configs/micro.yaml steps=50 --num_processes 2 --cpu  # two CPU processes (gloo)
    vlm train --config configs/coco_vit_b16.yaml --multi_gpu --num_processes 8

``--config`` and the ``key=value`` overrides are training's; every other argument is an
``accelerate launch`` option, parsed by Accelerate's own parser and run by its own
``launch_command`` (the simple launcher, or torchrun for several processes).

Why not plain ``accelerate launch scripts/train.py``: its launcher turns every failing child
into exit status 1 and adds a traceback (``CalledProcessError``; with ``--multi_gpu`` torchrun's
``ChildFailedError`` report). Here:

- the config, the data paths and ``resume`` are checked before anything is launched (one line,
  exit 2), as is ``--multi_gpu`` on a machine without GPUs;
- the children's exit status is passed on (0 done, 1 failed, 2 bad config or data; 128+N for a
  child killed by signal N), from the first process that failed, with no launcher report;
- ``--use_fsdp`` (or ``fsdp=true``) where only CPUs train is refused in one line: Accelerate 1.16
  runs FSDP on GPUs only (``vlm.training.fsdp``);
- ``--cpu --num_processes N`` (N > 1) starts N gloo processes (``accelerate launch --cpu`` starts
  one), as ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu`` does;
- the children stop when this process dies (``vlm.training.parent_watch``); Ctrl-C stops them
  and waits for them, exit 130.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from typing import Optional

from vlm.errors import UsageError

CHILD_MODULE = "vlm.training.cli"
OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")  # key=value, dotted keys included
PROG = "vlm train"
HELP = f"""usage: {PROG} --config FILE.yaml [key=value ...] [accelerate launch options]

Train a CoCa or CLIP model (docs/training.md). --config and key=value overrides are the
training recipe (vlm/training/config.py); the other arguments go to `accelerate launch`
(e.g. --num_processes N, --cpu, --multi_gpu, --mixed_precision bf16, --main_process_port P;
see `accelerate launch --help`). --cpu with --num_processes N > 1 starts N CPU processes.

Exit status: 0 done, 1 the run failed (e.g. a non-finite loss), 2 a bad config, data path or
launch option, 128+N a process killed by signal N (130: interrupted)."""


def split_args(argv: list[str]) -> tuple[Optional[str], list[str], list[str]]:
    """(config file, key=value overrides, accelerate launch options) of ``vlm train``'s arguments."""
    config, overrides, launch = None, [], []
    it = iter(argv)
    for arg in it:
        if arg == "--config":
            config = next(it, None)
            if config is None:
                raise UsageError("--config: expected a YAML file")
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif OVERRIDE.match(arg):
            overrides.append(arg)
        else:
            launch.append(arg)
    return config, overrides, launch


def launch_args(launch: list[str], child: list[str]):
    """Accelerate's parsed ``launch`` namespace for ``-m vlm.training.cli CHILD...``."""
    from accelerate.commands.launch import launch_command_parser

    parser = launch_command_parser()

    def refuse(message: str):
        raise UsageError(f"accelerate launch options: {message}")

    parser.error = refuse  # one line instead of Accelerate's usage text
    args = parser.parse_args([*launch, "--module", CHILD_MODULE, *child])
    if args.training_script != CHILD_MODULE:  # a stray word before our module took its place
        raise UsageError(f"{args.training_script}: neither a key=value override nor an accelerate launch option")
    return args


def _accelerator_available() -> bool:
    import torch
    from accelerate.utils import is_mlu_available, is_npu_available, is_xpu_available

    return torch.cuda.is_available() or is_xpu_available() or is_npu_available() or is_mlu_available()


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def prepare(args) -> None:
    """vlm's adjustments to Accelerate's launch options (see the module docstring)."""
    from accelerate.commands.config import default_config_file

    cpu_env = _truthy(os.environ.get("ACCELERATE_USE_CPU"))
    if getattr(args, "use_fsdp", False) and (args.cpu or cpu_env or not _accelerator_available()):
        from vlm.training.fsdp import cpu_launch_error

        raise cpu_launch_error("no GPU for it here")
    if args.cpu and (args.num_processes or 1) > 1:
        args.cpu, args.multi_gpu = False, True
        os.environ["ACCELERATE_USE_CPU"] = "1"
        cpu_env = True
    if args.multi_gpu and not cpu_env and not _accelerator_available():
        n = args.num_processes or 2
        raise UsageError(f"--multi_gpu: this machine has no GPU; for {n} CPU processes use "
                         f"--cpu --num_processes {n} (or set ACCELERATE_USE_CPU=1)")
    if args.config_file is None and not os.path.isfile(default_config_file):
        # the values Accelerate would otherwise fill in with a warning; the training config
        # sets the precision (Accelerator(mixed_precision=cfg.mixed_precision))
        args.num_machines = args.num_machines or 1
        if args.num_processes is None and not args.multi_gpu and not _accelerator_available():
            args.num_processes = 1  # Accelerate would count the GPUs: 0
        args.mixed_precision = args.mixed_precision or "no"
        args.dynamo_backend = args.dynamo_backend or "no"


def exit_status(code: int) -> int:
    """A child's return code as ours: 0-2 as is, a signal N (negative) as 128+N, others 1."""
    if code < 0:
        return 128 - code
    return code if code in (0, 1, 2) else 1


def _wait_for_children(timeout: float = 60.0) -> None:
    try:
        import psutil
    except ImportError:  # pragma: no cover (accelerate depends on psutil)
        return
    psutil.wait_procs(psutil.Process().children(recursive=True), timeout=timeout)


def simple_launcher(args) -> None:
    """One process: Accelerate's own command and environment, the child's stdio inherited.

    Accelerate's simple launcher (1.16) reads the child's stderr through a pipe to repeat it: a
    child whose launcher died then has nowhere to say why it stops, and on Ctrl-C the launcher
    terminates the child before the child's own line is out. Here the child writes where this
    process writes, and Ctrl-C (which reaches the child too) waits for it.
    """
    import subprocess

    from accelerate.utils import prepare_simple_launcher_cmd_env

    cmd, env = prepare_simple_launcher_cmd_env(args)
    proc = subprocess.Popen(cmd, env=env)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.wait()  # the child got the same SIGINT: its one line, then it exits
        raise
    if code != 0:
        raise subprocess.CalledProcessError(code, cmd)


def _quiet_elastic() -> None:
    """torchrun's own log lines ("failed (exitcode: 2)", "Received 2 death signal"): the exit
    status and the children's one line say it. Each of its modules' loggers has its own level,
    set when the module is imported: the ones torchrun imports late are imported here first."""
    import torch.distributed.elastic.agent.server.api  # noqa: F401
    import torch.distributed.elastic.agent.server.local_elastic_agent  # noqa: F401
    import torch.distributed.launcher.api  # noqa: F401

    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("torch.distributed.elastic") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.CRITICAL)


def run(args) -> int:
    """``launch_command(args)``, its failures mapped to an exit status without a traceback."""
    import subprocess

    import accelerate.commands.launch as accelerate_launch
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    os.environ["VLM_LAUNCHER_PID"] = str(os.getpid())  # the children watch this process
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    _quiet_elastic()
    accelerate_launch.simple_launcher = simple_launcher  # launch_command's one-process path
    try:
        accelerate_launch.launch_command(args)
    except subprocess.CalledProcessError as e:  # the simple launcher (one process)
        return exit_status(e.returncode)
    except ChildFailedError as e:  # torchrun: the first process that failed
        _, failure = e.get_first_failure()
        return exit_status(failure.exitcode)
    except SignalException as e:  # a signal to this process: torchrun has passed it on to the children
        if e.sigval != signal.SIGINT:  # (on Ctrl-C the children say it themselves)
            print(f"{PROG}: stopped by {e.sigval.name}; continue with resume=latest", file=sys.stderr)
        return 128 + int(e.sigval)
    except KeyboardInterrupt:  # Ctrl-C reached the children too; let them finish their one line
        _wait_for_children()
        return 130
    except SystemExit as e:  # Accelerate >= 1.16 exits 128+N itself on a signal, its children stopped
        _wait_for_children()
        return e.code if isinstance(e.code, int) else 1
    except ValueError as e:  # Accelerate's own checks of the option combination
        raise UsageError(f"accelerate launch options: {e}") from None
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(HELP)
        return 0
    config, overrides, launch = split_args(argv)
    from vlm.training.cli import TrainFailed, preflight

    try:
        preflight(config, overrides)  # before any process starts: one line, exit 2
    except TrainFailed as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.code
    child = (["--config", config] if config else []) + overrides
    args = launch_args(launch, child)
    prepare(args)
    return run(args)
