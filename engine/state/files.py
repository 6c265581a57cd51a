"""Folders and files of the state directory that only their owner may read.

The state directory (`.engine` by default) holds the fleet keys, the deploy keys, the SQLite
store, install logs and the local provider's seeds: what would let anyone who reads it act as
the engine. Every folder the engine makes there is 0700 and every file 0600; a folder inside
the state directory, or a file, that an older engine (or a umask) left more open is tightened
when the engine opens it. The state directory itself, when the engine finds it already there,
keeps its mode: it may be a folder of the user's (`--state-dir .` is the current directory, a
repository's root), not the engine's to change, and what the engine keeps in it is private
either way.

    private_dir(state_dir, "keys")     .engine made 0700 if missing; .engine/keys made or
                                       tightened to 0700
    private_file(state_dir / "x.db")   an existing file tightened to 0600
"""

from __future__ import annotations

import stat
from pathlib import Path

from engine.errors import EngineError

DIR_MODE = 0o700
FILE_MODE = 0o600
_OTHERS = 0o077  # the group's and everyone else's permission bits


def private_dir(base: Path, *parts: str) -> Path:
    """`base / parts...`, every folder of it from `base` down only its owner's: each missing
    one is made 0700 (so are missing parents of `base`), each existing one of `parts` loses its
    group and other permissions. An existing `base` keeps its mode: it may be the user's
    folder; only the folders below it are the engine's to tighten. Returns the innermost folder.

    An EngineError says which folder could not be made or tightened, and why.
    """
    missing = []
    ancestor = base.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        missing.append(ancestor)
        ancestor = ancestor.parent
    folders = [base]
    for part in parts:
        folders.append(folders[-1] / part)
    for folder in (*reversed(missing), *folders):
        _make(folder)
    for folder in folders[1:]:
        _tighten(folder)
    return folders[-1]


def private_file(path: Path) -> None:
    """Take the group's and other users' permissions off `path`, if it exists."""
    _tighten(path)


def _make(folder: Path) -> None:
    try:
        folder.mkdir(mode=DIR_MODE)
    except FileExistsError:
        if not folder.is_dir():
            raise EngineError(
                f"{folder} is a file, where the engine keeps a folder of its state; move it "
                "away or choose another state directory (--state-dir)"
            ) from None
    except OSError as error:
        raise EngineError(
            f"cannot create the folder {folder}: {error.strerror}; choose another state "
            "directory (--state-dir) or fix the permissions of its parent"
        ) from None


def _tighten(path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & _OTHERS:
            path.chmod(mode & ~_OTHERS)
    except FileNotFoundError:
        return
    except OSError as error:
        raise EngineError(
            f"cannot make {path} private to its owner (chmod go-rwx): {error.strerror}; it "
            "holds the engine's secrets. Run the engine as the user who owns it"
        ) from None
