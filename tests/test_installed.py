"""engine.installed: the bundled model, the user's installed bundles and remembered folders, each listed
once with its name, image size and tasks read without loading weights; a broken one as unavailable
with a one-line reason; `tessera models` prints them and the folder they go in."""

from __future__ import annotations

import json
import shutil

import pytest

from engine.bundle import DECODE_FILE, WEIGHTS_FILE, write_manifest
from engine.cli import main
from engine.engine import Engine
from engine.errors import BundleError
from engine.installed import describe, installed_bundles
from engine.paths import default_bundle_dir, models_dir
from engine.task_table import EngineTask


def install(tiny_bundle, name: str):
    """A copy of the tiny bundle (16 px images) in the user's models folder."""
    return shutil.copytree(tiny_bundle, models_dir() / name)


def rewrite_config(path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))
    write_manifest(path)


def test_the_bundled_model_comes_first(tessera_home):
    (bundled,) = installed_bundles()
    assert bundled.path == default_bundle_dir() and bundled.source == "bundled" and bundled.available
    assert bundled.name == "shapes-default" and bundled.image_size == 64
    assert {EngineTask.GENERATE, EngineTask.CAPTION, EngineTask.INPAINT} <= bundled.tasks


def test_installed_and_recent_bundles_each_once(tiny_bundle, tessera_home, tmp_path):
    a = install(tiny_bundle, "b-tiny")
    rewrite_config(install(tiny_bundle, "a-t2i"), name="t2i only", tasks=["t2i"])
    (models_dir() / ".a-staged-import").mkdir()  # an import in progress: not a bundle yet
    elsewhere = shutil.copytree(tiny_bundle, tmp_path / "elsewhere")
    listed = installed_bundles([elsewhere, a, tmp_path / "deleted"])
    assert [(b.name, b.source) for b in listed] == [
        ("shapes-default", "bundled"), ("t2i only", "installed"), ("tiny-random-0", "installed"),
        ("tiny-random-0", "recent")]
    assert [b.path for b in listed[2:]] == [a, elsewhere]
    assert listed[1].tasks == {EngineTask.GENERATE} and listed[1].image_size == 16
    assert listed[2].tasks == set(EngineTask)


@pytest.mark.parametrize("damage, reason", [
    (lambda p: (p / DECODE_FILE).unlink(), "model/decode.onnx is missing"),
    (lambda p: (p / "manifest.json").unlink(), "manifest.json is missing"),
    (lambda p: (p / WEIGHTS_FILE).write_bytes(b"short"), "model.safetensors does not match"),
    (lambda p: rewrite_config(p, format="tessera-bundle/9"), "bundle format 'tessera-bundle/9'"),
    (lambda p: rewrite_config(p, tasks="t2i"), "tasks is not a list"),
    (lambda p: rewrite_config(p, components={}), "has no image tokenizer"),
    (lambda p: ((p / "config.json").write_text("[1, 2]"), write_manifest(p)), "not a JSON object"),
])
def test_a_broken_bundle_is_listed_unavailable_with_a_reason(tiny_bundle, tessera_home, damage, reason):
    damage(install(tiny_bundle, "broken"))
    broken = installed_bundles()[-1]
    assert broken.name == "broken" and not broken.available and reason in broken.error
    assert "\n" not in broken.error and broken.image_size == 0 and not broken.tasks


def test_listing_reads_no_weights_loading_checks_them(tiny_bundle, tessera_home):
    path = install(tiny_bundle, "tampered")
    data = bytearray((path / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes: only a hash sees it
    (path / WEIGHTS_FILE).write_bytes(bytes(data))
    assert describe(path, "installed").available
    with pytest.raises(BundleError, match="does not match its manifest hash"):
        Engine.load(path)


def test_tessera_models_prints_the_list_and_the_folder(tiny_bundle, tessera_home, capsys):
    (install(tiny_bundle, "broken") / DECODE_FILE).unlink()
    assert main(["models", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["models_dir"] == str(tessera_home / "models")
    assert [(b["name"], b["source"], b["image_size"]) for b in out["bundles"]] == [
        ("shapes-default", "bundled", 64), ("broken", "installed", 0)]
    bundled, broken = out["bundles"]
    assert bundled["tasks"][0] == "generate" and "decode.onnx is missing" in broken["error"]
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("shapes-default  (bundled) 64×64, generate, caption")
    assert lines[2].startswith("broken  (installed) unavailable: ")
    assert str(tessera_home / "models") in lines[-1]
    assert main(["models", "--dir"]) == 0 and capsys.readouterr().out == f"{tessera_home / 'models'}\n"
