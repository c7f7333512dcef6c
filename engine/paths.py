"""Where Tessera finds its shipped assets and keeps the user's data."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path


def assets_dir() -> Path:
    """The `assets/` folder: $TESSERA_ASSETS, inside a frozen build, beside the source tree (a checkout,
    an editable install) or where a wheel installs it (<prefix>/share/tessera/assets, pyproject.toml)."""
    if env := os.environ.get("TESSERA_ASSETS"):
        return Path(env)
    frozen_root = getattr(sys, "_MEIPASS", None)
    if frozen_root:
        return Path(frozen_root) / "assets"
    source = Path(__file__).resolve().parent.parent / "assets"
    return source if source.is_dir() else Path(sysconfig.get_path("data")) / "share" / "tessera" / "assets"


def bundled_models_dir() -> Path:
    """The models that ship with Tessera, one bundle folder each."""
    return assets_dir() / "models"


def default_bundle_dir() -> Path:
    return bundled_models_dir() / "shapes"


def default_image_tokenizer_dir() -> Path:
    return assets_dir() / "tokenizers" / "shapes-vq"


def default_text_tokenizer_path() -> Path:
    return assets_dir() / "tokenizers" / "shapes-text" / "tokenizer.json"


def user_data_dir() -> Path:
    """Per-user data (library, autosave, logs); $TESSERA_HOME overrides it (tests use it)."""
    if env := os.environ.get("TESSERA_HOME"):
        path = Path(env)
    else:
        from platformdirs import user_data_dir as _platform_dir

        path = Path(_platform_dir("Tessera", "Tessera"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Where the user's model bundles are installed (`tessera import janus --out`, `tessera export --out`
    into it): every bundle folder here is listed by engine.bundle.installed_bundles (the studio's
    File › Model)."""
    path = user_data_dir() / "models"
    path.mkdir(exist_ok=True)
    return path
