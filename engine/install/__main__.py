"""`python -m engine.install SOCKET`: the install forker. It loads pyinfra and the deploys once,
then starts one install process per host by forking itself, so a host's install starts with
everything loaded instead of spending a third of a second or more of CPU importing it.

The engine (engine/install/runner.py) starts it with SOCKET, the file descriptor of its end of
a Unix socket pair, and asks for each install by sending file descriptors over it: the new
process's stdin, stdout and stderr, its lifeline and the host's lock. The forker answers with
the new process's id. Each install process reads a HostRequest as JSON on stdin, writes a
HostResult as JSON on stdout and pyinfra's log on stderr (secrets masked), leads a session of
its own (so it and all it starts can be stopped at once) and ends with its lifeline
(engine.install.worker.stop_with_parent). The forker, which reaps it, then writes on the same
stdout how it ended (engine.install.model.STATUS_MARK and its exit code) and closes it, so an
install that ended without a result says how it ended. The forker ends when the engine closes
its end of the socket, which the kernel does when the engine ends however it ends. It is not
meant to be run by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import traceback
from contextlib import redirect_stdout

from engine.install.model import STATUS_MARK, HostRequest, from_json, to_json
from engine.install.worker import configure_logging, run_request, stop_with_parent

MAX_FDS = 8
# The stdout of each install process alive, kept to say how it ended.
_OUTPUTS: dict[int, int] = {}


def main() -> None:
    """Fork an install process for each request on the socket, until the engine closes it."""
    channel = socket.socket(fileno=int(sys.argv[1]))
    # Reaped as they end, so that none lingers as a zombie and the CPU time they used counts
    # as this process's children's (the engine's, once it has waited for this process). The
    # engine learns how each went from its stdout.
    signal.signal(signal.SIGCHLD, _reap)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(channel, 64, MAX_FDS)
        except ConnectionError:
            message = b""
        if not message:
            # Nothing to flush or clean up; tearing down pyinfra's modules would take 0.3 s.
            os._exit(0)
        # Held until the new process's stdout is kept: one that ends at once is reaped after.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        pid = os.fork()
        if pid == 0:
            channel.close()
            # The others' outputs are not this process's to hold: their ends would wait for it.
            for output in _OUTPUTS.values():
                os.close(output)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            os._exit(_install(*fds))
        _OUTPUTS[pid] = fds[1]
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        for fd in fds[:1] + fds[2:]:
            os.close(fd)
        channel.sendall(f"{pid}\n".encode())


def _reap(signum: int, frame: object) -> None:
    with contextlib.suppress(ChildProcessError):
        while True:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if not pid:
                return
            output = _OUTPUTS.pop(pid, None)
            if output is not None:
                code = os.waitstatus_to_exitcode(status)
                with contextlib.suppress(OSError):  # the engine stopped reading: it gave up
                    os.write(output, STATUS_MARK + str(code).encode())
                os.close(output)


def _install(stdin: int, stdout: int, stderr: int, lifeline: int, *lock: int) -> int:
    """The forked install process: one host, from its request on stdin to its result on
    stdout. `lock` stays open (held) until the process ends."""
    os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for fd, standard in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, standard)
        os.close(fd)
    stop_with_parent(lifeline)
    code = 0
    try:
        request = from_json(HostRequest, json.load(sys.stdin))
        configure_logging()
        # Only the result may reach stdout: the engine reads it as JSON.
        with redirect_stdout(sys.stderr):
            result = run_request(request)
        json.dump(to_json(result), sys.stdout)
    except BaseException:  # the engine reports the log's tail; this process must not return
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return code


if __name__ == "__main__":
    main()
