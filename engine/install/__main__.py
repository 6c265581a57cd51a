"""`python -m engine.install [LIFELINE]`: install one host. A HostRequest as JSON on stdin, a
HostResult as JSON on stdout, pyinfra's log on stderr (secrets masked). The engine starts one
of these per host (engine/install/runner.py), with LIFELINE, the file descriptor of a pipe it
keeps open: when the engine is gone, so is this process, with everything it started. It is
not meant to be run by hand.
"""

from __future__ import annotations

import json
import sys
from contextlib import redirect_stdout

from engine.install.model import HostRequest, from_json, to_json
from engine.install.worker import configure_logging, run_request, stop_with_parent


def main() -> int:
    if len(sys.argv) > 1:
        stop_with_parent(int(sys.argv[1]))
    request = from_json(HostRequest, json.load(sys.stdin))
    configure_logging()
    # Only the result may reach stdout: the parent reads it as JSON.
    with redirect_stdout(sys.stderr):
        result = run_request(request)
    json.dump(to_json(result), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
