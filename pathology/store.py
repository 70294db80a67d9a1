"""Keep slide files in one folder tree and never let a path lead out of it."""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path, PurePosixPath

from flask import Flask, current_app

from his.errors import NotFound

INCOMING = ".incoming"
_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class PathEscapesStore(NotFound):
    """A stored path that would lead outside the slide store (reported as not found)."""

    code = "SLIDE_FILE_NOT_FOUND"
    message = "The slide's file is not in the slide store."


class SlideStore:
    """Lay out the slide store: ``<site>/<slide id>/<files>``, and ``.incoming/`` for uploads."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def resolve(self, relative: str) -> Path:
        """Return the absolute path of a stored path.

        Raises PathEscapesStore for an absolute path, a ``..`` part, or a symlink that
        leads outside the store.
        """
        pure = PurePosixPath(relative)
        if pure.is_absolute() or not pure.parts or any(not _SAFE_PART.match(p) for p in pure.parts):
            raise PathEscapesStore()
        candidate = (self.root / Path(*pure.parts)).resolve()
        if not candidate.is_relative_to(self.root) or candidate == self.root:
            raise PathEscapesStore()
        return candidate

    def relative(self, path: Path) -> str:
        """Return the stored (relative, POSIX) form of a path inside the store.

        Raises PathEscapesStore when the path is outside the store.
        """
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root):
            raise PathEscapesStore()
        return resolved.relative_to(self.root).as_posix()

    def new_incoming(self) -> Path:
        """Create and return a private folder inside the store for one upload in progress."""
        incoming = self.root / INCOMING
        incoming.mkdir(parents=True, exist_ok=True)
        folder = incoming / secrets.token_hex(16)
        folder.mkdir(mode=0o700)
        return folder

    def slide_folder(self, site_code: str, slide_id: str) -> Path:
        """Return where an accepted slide's files live.

        Raises PathEscapesStore for a site code or id that is not a plain name.
        """
        if not _SAFE_PART.match(site_code) or not _SAFE_PART.match(slide_id):
            raise PathEscapesStore()
        return self.root / site_code / slide_id

    def accept(self, incoming: Path, site_code: str, slide_id: str) -> Path:
        """Move an upload's folder into its final place in one rename; return the new folder.

        Raises PathEscapesStore when the incoming folder is not one of the store's.
        """
        if incoming.resolve().parent != (self.root / INCOMING).resolve():
            raise PathEscapesStore()
        target = self.slide_folder(site_code, slide_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(incoming, target)
        return target

    @staticmethod
    def discard(folder: Path) -> None:
        """Remove a folder of the store and everything in it (an upload refused or undone)."""
        shutil.rmtree(folder, ignore_errors=True)


def slide_store(app: Flask | None = None) -> SlideStore:
    """Return the app's slide store, under the settings' ``data_dir``."""
    target = app or current_app
    store = target.extensions.get("vetinh.pathology.store")
    if store is None:
        settings = target.extensions["vetinh.settings"]
        root = Path(settings.data_dir) / "slides"
        root.mkdir(parents=True, exist_ok=True)
        store = SlideStore(root)
        target.extensions["vetinh.pathology.store"] = store
    return store
