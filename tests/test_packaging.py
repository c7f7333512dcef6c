"""Packaging checks that run with the suite (seconds): the studio's runtime import graph stays
torch-free, and build.spec ships every data file the frozen studio reads. The frozen build itself
is bench/package.sh (minutes; its figures are in docs/benchmarks.md, "Packaging")."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

import pytest

from engine.bundle import MANIFEST_FILE, write_manifest
from engine.paths import assets_dir, default_bundle_dir

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "build.spec"
REAL_BUNDLE = ROOT / "assets" / "models" / "shapes"


def spec_literals() -> dict:
    """build.spec's plain-literal settings, read without running it."""
    values = {}
    for node in ast.parse(SPEC.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue  # a computed value, not a setting
    return values


def shipped(dest: str, data_dirs: list) -> tuple[str, str] | None:
    """The DATA_DIRS entry (source, destination) whose destination holds `dest`, or None."""
    for src, dst in data_dirs:
        if PurePosixPath(dest).is_relative_to(PurePosixPath(dst)):
            return src, dst
    return None


def frozen_path(path: Path) -> str:
    """Where a file under assets_dir() lies inside the frozen build (engine.paths: <_MEIPASS>/assets/...)."""
    return (PurePosixPath("assets") / path.relative_to(assets_dir()).as_posix()).as_posix()


def run_python(code: str, **env: str) -> dict:
    """Run `code` in a fresh interpreter (nothing preloaded) and return the JSON it prints last."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen", **env},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- (a) the runtime import graph ---------------------------------------------------------------------

IMPORT_GRAPH = """
import importlib, json, pkgutil, sys

BLOCKED = ("torch", "training")
attempts, current = [], [None]


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(f"{current[0]} imports {name}")
            raise ImportError(f"{name} is blocked: the studio's runtime must not import it")
        return None


sys.meta_path.insert(0, Blocker())
import app, engine

failed = {}


def load(package, skip=()):
    # every module under `package`, depth first; `skip` is never imported, not even its __init__
    names = []
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if info.name.startswith(skip):
            continue
        names.append(info.name)
        current[0] = info.name
        try:
            module = importlib.import_module(info.name)
        except Exception as exc:
            failed[info.name] = f"{type(exc).__name__}: {exc}"
            continue
        if info.ispkg:
            names += load(module, skip)
    return names


engine_modules = load(engine, skip=("engine.nn",))
qt_after_engine = sorted(m for m in sys.modules if m.split(".")[0] in ("PySide6", "qtpy", "qdarkstyle"))
app_modules = load(app)
print(json.dumps({"engine": engine_modules, "app": app_modules, "failed": failed, "attempts": attempts,
                  "qt_after_engine": qt_after_engine,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
"""


def test_studio_runtime_imports_without_torch_or_training():
    out = run_python(IMPORT_GRAPH)
    assert "engine.engine" in out["engine"] and "engine.cli" in out["engine"]
    assert not any(m.startswith("engine.nn") for m in out["engine"])
    assert out["app"], "pkgutil found no app modules"
    assert out["failed"] == {}, f"runtime modules that fail without torch/training: {out['failed']}"
    assert out["attempts"] == [], f"runtime modules that try to import torch/training: {out['attempts']}"
    assert out["loaded"] == []
    # CONTRACTS: engine's runtime modules import no Qt either (the CLI and self-test run headless)
    assert out["qt_after_engine"] == [], f"engine runtime modules import Qt: {out['qt_after_engine']}"


# -- (b) build.spec names every data file the bundle needs -------------------------------------------

def test_spec_excludes_torch_and_training():
    excludes = spec_literals()["EXCLUDES"]
    for name in ("torch", "training", "engine.nn"):
        assert name in excludes, f"build.spec EXCLUDES lacks {name!r}"


def test_spec_data_dirs_are_literal_and_exist():
    data_dirs = spec_literals()["DATA_DIRS"]
    assert data_dirs and all(isinstance(s, str) and isinstance(d, str) for s, d in data_dirs)
    for src, _dst in data_dirs:
        # the model is trained late in a session (bench/package.sh stages a tiny one meanwhile)
        if not PurePosixPath(src).is_relative_to("assets/models"):
            assert (ROOT / src).is_dir(), f"build.spec ships {src}, which does not exist"


def _check_bundle_shipped(bundle: Path, check_sources: bool) -> None:
    spec = spec_literals()
    data_dirs, torch_only = spec["DATA_DIRS"], spec["TORCH_ONLY_FILES"]
    base = frozen_path(default_bundle_dir())
    files = [*json.loads((bundle / MANIFEST_FILE).read_text())["files"], MANIFEST_FILE]
    needed = [rel for rel in files if not any(fnmatch(rel, p) for p in torch_only)]
    assert "model/prefill.onnx" in needed and "config.json" in needed
    for rel in needed:
        dest = f"{base}/{rel}"
        entry = shipped(dest, data_dirs)
        assert entry, f"{rel} of the model bundle would not be in the frozen build ({dest})"
        if check_sources:
            src, dst = entry
            source = ROOT / src / PurePosixPath(dest).relative_to(dst)
            assert source.is_file(), f"build.spec would look for {rel} at {source}"


def test_spec_ships_every_file_of_a_bundle(tiny_bundle):
    _check_bundle_shipped(Path(tiny_bundle), check_sources=False)


@pytest.mark.skipif(not (REAL_BUNDLE / MANIFEST_FILE).is_file(),
                    reason="assets/models/shapes is not exported yet")
def test_spec_ships_every_file_of_the_default_bundle():
    _check_bundle_shipped(REAL_BUNDLE, check_sources=True)


def test_runtime_bundle_without_torch_only_files_loads(tiny_bundle, tmp_path):
    """build.spec ships a copy of the bundle without TORCH_ONLY_FILES: it must still verify and load."""
    from engine.engine import Engine

    torch_only = spec_literals()["TORCH_ONLY_FILES"]
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy, ignore=shutil.ignore_patterns(*torch_only))
    assert any(fnmatch(p.name, pat) for p in Path(tiny_bundle).rglob("*") for pat in torch_only), \
        "the tiny bundle has no torch-only file: this test checks nothing"
    write_manifest(copy)
    engine = Engine.load(copy)
    assert engine.tasks


ICON_CALLS = {"set_icon": 1, "icon": 0}  # function name -> position of the icon-name argument


def static_asset_references() -> set[str]:
    """Asset paths (relative to assets/) named in app/ source: `assets_dir() / "a" / "b"` chains and
    constant icon names given to theme.set_icon / theme.icon / icon=."""
    found = set()
    for path in (ROOT / "app").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                parts, left = [], node
                while isinstance(left, ast.BinOp) and isinstance(left.op, ast.Div):
                    parts.insert(0, left.right)
                    left = left.left
                if isinstance(left, ast.Call) and getattr(left.func, "id", None) == "assets_dir":
                    consts = []
                    for part in parts:  # the literal prefix of the path: a folder at least
                        if not (isinstance(part, ast.Constant) and isinstance(part.value, str)):
                            break
                        consts.append(part.value)
                    if consts:
                        found.add("/".join(consts))
            elif isinstance(node, ast.Call):
                name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
                args = [*node.args]
                if name in ICON_CALLS and len(args) > ICON_CALLS[name]:
                    arg = args[ICON_CALLS[name]]
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        found.add(f"icons/{arg.value}.svg")
                for kw in node.keywords:
                    value = kw.value
                    if kw.arg == "icon" and isinstance(value, ast.Constant) and isinstance(value.value, str):
                        found.add(f"icons/{value.value}.svg")
    return found


STUDIO_OPENS = """
import argparse, json, os, sys
from pathlib import Path

from engine.paths import assets_dir

root, opened = assets_dir().resolve(), set()


def audit(event, args):
    if event == "open" and isinstance(args[0], (str, os.PathLike)):
        path = Path(os.fsdecode(args[0])).resolve()
        if path.is_relative_to(root):
            opened.add(path.relative_to(root).as_posix())


sys.addaudithook(audit)
from app.main import create_studio

qapp, win = create_studio(argparse.Namespace(screenshot=None, demo=True, bundle=None))
win.show()
qapp.processEvents()
print(json.dumps(sorted(opened)))
sys.stdout.flush()
os._exit(0)  # no teardown: only what the studio opened while starting matters here
"""


def test_spec_ships_every_asset_the_studio_reads(tmp_path):
    # What the studio really opens while it starts (demo engine, offscreen) plus what app/ names statically.
    opened = run_python(STUDIO_OPENS, TESSERA_HOME=str(tmp_path), TESSERA_FAKE_ENGINE="1")
    assert any(p.startswith("icons/") for p in opened) and "styles/studio.qss" in opened, opened
    data_dirs = spec_literals()["DATA_DIRS"]
    for rel in sorted(set(opened) | static_asset_references()):
        dest = f"assets/{rel}"
        entry = shipped(dest, data_dirs)
        assert entry, f"the studio reads {dest}, which build.spec's DATA_DIRS does not ship"
        source = ROOT / entry[0] / PurePosixPath(dest).relative_to(entry[1])
        assert source.exists(), f"the studio reads {dest}, which does not exist at {source}"


def test_static_scan_finds_icons():
    # guards the scanner itself: app/ names icons in calls like theme.set_icon(button, "stop")
    refs = static_asset_references()
    assert "styles/studio.qss" in refs and any(r.startswith("icons/") and r.endswith(".svg") for r in refs)


def test_wheel_installs_every_asset_folder_where_assets_dir_finds_it():
    """pyproject's data-files put each folder of assets/ under share/tessera/ (engine.paths.assets_dir()
    reads it there in a non-editable install): a new folder must be listed too."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    root = Path(__file__).resolve().parent.parent
    data_files = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    listed = {}
    for dest, patterns in data_files.items():
        for pattern in patterns:
            folder = str(Path(pattern).parent)
            assert dest == f"share/tessera/{folder}", (dest, pattern)
            listed[folder] = {p.name for p in root.glob(pattern) if p.is_file()}
    shipped: dict[str, set[str]] = {}
    for path in (root / "assets").rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            shipped.setdefault(str(path.parent.relative_to(root)), set()).add(path.name)
    assert listed == shipped
