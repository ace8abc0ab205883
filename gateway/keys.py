"""The gateway's master key, and the per-tenant secrets derived from it.

Each tenant's DATASETTE_SECRET is HMAC-SHA256(master key, tenant name): distinct per tenant (a
cookie signed for one tenant is worthless on another), stable across restarts and hot swaps (so
sessions and CSRF tokens survive them), and stored nowhere a tenant can read.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

MASTER_KEY_FILE = "secret.key"


def load_master_key(state_dir: Path) -> bytes:
    """Read state_dir/secret.key, creating it (0600, 32 random bytes) on first use."""
    path = state_dir / MASTER_KEY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    write_private_file(path, key.hex().encode() + b"\n")
    return key


def cluster_master_key(cluster_secret: bytes) -> bytes:
    """A cluster node's master key, the same on every node: derived from the cluster's
    secret.key (cluster/tls.py), so that a form, a hand-off pass or a ds_actor made by one node
    is good on every other (an edge signs the actor a host's tenant checks)."""
    return hmac.new(cluster_secret, b"gateway-master-key", hashlib.sha256).digest()


def tenant_secret(master_key: bytes, tenant: str) -> str:
    return hmac.new(master_key, b"datasette-secret:" + tenant.encode(), hashlib.sha256).hexdigest()


def write_private_file(path: Path, data: bytes) -> None:
    """Write a 0600 file atomically: readers see the old content or the new, never half."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
