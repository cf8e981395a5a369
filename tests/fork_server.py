"""A warm interpreter for the test suite: one real child process per command, without the start-up.

Most CLI tests run ``python -m vlm.cli.main ...`` (or ``scripts/train.py``) as a subprocess to
check what a user sees: the exit status, the stderr lines, the files written. A fresh interpreter
spends 2-3 s importing torch before vlm runs at all; across the suite that was minutes.

This server imports the heavy libraries once (no torch operation runs here, so no thread pool
exists when it forks), then answers one JSON request per line on stdin: it forks, and the child
becomes the command — its own process with its own pid, its stdin on /dev/null, its stdout and
stderr on the files named in the request, the request's working directory, environment and
``sys.argv`` — and runs the module (``runpy.run_module``, as ``python -m``) or the script
(``runpy.run_path``, as ``python SCRIPT``) at the top level of this file, so it ends exactly as
the interpreter ends such a program: ``SystemExit`` gives the status, an uncaught exception
prints its traceback and gives 1, atexit handlers and non-daemon threads run at exit.
The server answers ``{"pid": N}`` at once and ``{"status": S, "cpu_s": T}`` when the child has
ended (S as ``subprocess`` gives it: negative for a signal; T its user + system CPU seconds).

What it cannot show, and what therefore keeps a fresh interpreter (``conftest.run_vlm(...,
fresh=True)`` or a plain ``subprocess.run``): which modules start-up imports, an environment
that differs from the one the server was started with (variables read at import time), signals
sent to a process tree. The client is ``conftest.ForkServer``.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys


def serve(reply) -> dict | None:
    """The server loop; returns the request in the forked child (which then runs it), None at EOF."""
    for line in sys.stdin:
        req = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            return req
        reply({"pid": pid})
        _, status, usage = os.wait4(pid, 0)
        reply({"status": os.waitstatus_to_exitcode(status), "cpu_s": usage.ru_utime + usage.ru_stime})
    return None


def become(req: dict) -> None:
    """In the child: the command's stdio, directory, environment and argv."""
    os.setpgid(0, 0)  # its own process group, as a timeout kill takes the whole group
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for fd, target in ((null, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    sys.stdin = open(0, closefd=False)
    sys.argv = [req["target"], *req["args"]]


def run(request: dict) -> int:
    """Run the command; end as the interpreter ends a program, less the teardown of every module.

    Non-daemon threads are joined and atexit handlers run (weakref finalizers included) as at any
    exit; what is skipped is freeing the preloaded modules (torch: about a second of CPU in a
    forked child, which a cheap command that never imports torch would not pay).
    """
    import threading
    import traceback

    try:
        if request["kind"] == "module":
            sys.path[0] = os.getcwd()  # as `python -m` puts it
            runpy.run_module(request["target"], run_name="__main__", alter_sys=True)
        else:
            sys.path[0] = os.path.dirname(os.path.abspath(request["target"]))
            runpy.run_path(request["target"], run_name="__main__")
        code = 0
    except SystemExit as e:  # the interpreter's rules: None -> 0, an int, anything else printed -> 1
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:  # as the interpreter: the traceback, then death by SIGINT
        import signal

        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    threading._shutdown()  # join non-daemon threads, as Py_Finalize does first
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return code & 0xFF


if __name__ == "__main__":
    proto = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol stays on the pipe the client reads
    os.dup2(2, 1)  # stray prints of the server go to its stderr, never into the protocol
    for name in sys.argv[1:]:
        importlib.import_module(name)
    proto.write(json.dumps({"ready": True}) + "\n")
    request = serve(lambda obj: proto.write(json.dumps(obj) + "\n"))
    if request is not None:  # the child: run the command as the interpreter would run it
        proto.close()
        become(request)
        del request["env"]
        os._exit(run(request))
