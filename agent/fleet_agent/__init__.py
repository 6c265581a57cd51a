"""The fleet engine's on-server agent: a small, strict HTTPS API for one server.

config      the JSON config file the engine renders (engine/install/agent.py)
tls         the agent's key and self-signed certificate, made on first start
guard       ASGI middleware: bearer token, body size limit, audit log
metrics     host metrics from psutil, CPU sampled over a window
dockerops   containers, images and networks through the Docker SDK
tasks       system tasks (package update/upgrade, reboot) run in the host's namespaces
reporting   heartbeats and container events sent to the control plane
app         the FastAPI application and its routes
__main__    `python -m fleet_agent --config PATH`: load, make TLS, serve
"""

import sys
import warnings

__version__ = "0.1.0"

# The agent reaches Docker over its unix socket and reads JSON. docker-py loads its SSH
# transport (paramiko, about 15 MB) whenever paramiko is importable, and requests loads a
# character-set detector (about 3 MB); the agent needs neither, and its memory budget is 60 MB.
for _unneeded in ("paramiko", "chardet", "charset_normalizer"):
    sys.modules.setdefault(_unneeded, None)  # type: ignore[arg-type]
warnings.filterwarnings(
    "ignore", message="Unable to find acceptable character detection dependency"
)
