"""The model bundles a front end can offer (the studio's File › Model, `tessera models`), read from their
config.json and manifest without loading or hashing any weights:

    bundled     assets/models/*           the models that ship with Tessera (engine.paths.bundled_models_dir)
    installed   <user data>/models/*      where `tessera import` / `tessera export --out` put yours
                                          (engine.paths.models_dir; $TESSERA_HOME moves it)
    recent      folders opened before     the studio's settings remember them

A folder that is not a usable bundle is listed as unavailable with a one-line reason; listing never
raises for one. Each folder is listed once (the first place it is found in); hidden folders (a staged
export or import in progress) are skipped, and so are remembered folders that no longer exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from engine.bundle import Bundle
from engine.errors import TesseraError
from engine.paths import bundled_models_dir, models_dir
from engine.task_table import EngineTask, enabled_tasks


@dataclass(frozen=True)
class BundleInfo:
    path: Path
    name: str  # config.json "name", else the folder's
    source: str  # "bundled", "installed" or "recent"
    image_size: int = 0  # pixels on a side
    tasks: frozenset[EngineTask] = field(default_factory=frozenset)  # the requests it serves
    error: str = ""  # why it cannot be opened; "" when it can

    @property
    def available(self) -> bool:
        return not self.error


def describe(path: str | Path, source: str) -> BundleInfo:
    """One folder as a list shows it: its name, image size and tasks, or why it is unavailable."""
    path = Path(path)
    try:
        bundle = Bundle.load(path, hashes=False)  # files present at their sizes; none read
        name = str(bundle.config.get("name") or path.name)
        return BundleInfo(path, name, source, bundle.image_size, enabled_tasks(bundle.trained_tasks))
    except (TesseraError, OSError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return BundleInfo(path, path.name, source, error=reason)


def _folders(parent: Path) -> list[Path]:
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))


def installed_bundles(recent: Iterable[str | Path] = ()) -> list[BundleInfo]:
    """The bundled models, then the user's installed ones (each by folder name), then `recent` folders."""
    candidates = [(p, "bundled") for p in _folders(bundled_models_dir())]
    candidates += [(p, "installed") for p in _folders(models_dir())]
    candidates += [(Path(p), "recent") for p in recent if Path(p).is_dir()]
    listed, seen = [], set()
    for path, source in candidates:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            listed.append(describe(path, source))
    return listed
