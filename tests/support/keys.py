"""Public key lines for tests (well-formed OpenSSH lines; nobody holds the private halves)."""

from __future__ import annotations

OPS_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGl0Cm9wc0BsYXB0b3AgZXhhbXBsZSBrZXkgb25seQ ops@laptop"
)
DEPLOY_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRoZSBlbmdpbmUncyBkZXBsb3kga2V5IGZvciB0ZXN0cw "
    "fleet-engine"
)
# The shape of a 4096-bit RSA key line (725-750 bytes), the largest key a user commonly has.
RSA4096_KEY = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAACAQ" + "x" * 680 + " someone@example"
