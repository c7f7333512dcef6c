"""Studio preferences (theme, user presets, autosave interval, recent models) in
user_data_dir()/settings.json.

A plain JSON file rather than QSettings so that $TESSERA_HOME isolates everything (tests, portable use).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.io import atomic_write_text
from engine.paths import user_data_dir

log = logging.getLogger(__name__)


@dataclass
class StudioSettings:
    theme: str = "dark"  # "dark" | "light"
    presets: dict[str, dict] = field(default_factory=dict)  # the user's own sampling presets
    autosave_seconds: float = 3.0
    feather: int = 2  # inpaint edge feathering, image pixels
    recent_models: list[str] = field(default_factory=list)  # folders opened with Open model…, newest first

    @staticmethod
    def path() -> Path:
        return user_data_dir() / "settings.json"

    @classmethod
    def load(cls) -> StudioSettings:
        try:
            data = json.loads(cls.path().read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable settings file %s: %s", cls.path(), exc)
            return cls()
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**known)
        except TypeError as exc:
            log.warning("ignoring bad settings: %s", exc)
            return cls()

    def save(self) -> None:
        atomic_write_text(self.path(), json.dumps(asdict(self), indent=2))
