"""The `tessera` command: fast without torch, every command present, real import errors not hidden."""

from __future__ import annotations

import subprocess
import sys

import pytest

import engine.cli as cli

HIDE_TRAIN_EXTRA = "".join(f"sys.modules[{name!r}] = None\n" for name in cli.TRAIN_EXTRA)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", f"import sys\n{code}"], capture_output=True, text=True)


def test_help_imports_neither_torch_nor_onnx():
    proc = _python("from engine.cli import build_parser\nbuild_parser()\n"
                   "print(sorted(m for m in ('torch', 'onnx') if m in sys.modules))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_without_the_train_extra_every_command_is_listed_and_names_the_extra(tmp_path):
    """A runtime-only install: `data check` works, `model info` says which extra installs torch."""
    (tmp_path / "a.txt").write_text("a red circle")
    from PIL import Image

    Image.new("RGB", (16, 16), "red").save(tmp_path / "a.png")
    code = (f"{HIDE_TRAIN_EXTRA}from engine.cli import build_parser, main\n"
            "sub = build_parser()._subparsers._group_actions[0].choices\n"
            "print('@', sorted(sub))\n"
            "print('@', sorted(sub['data']._subparsers._group_actions[0].choices))\n"
            f"print('@', main(['data', 'check', {str(tmp_path)!r}]))\n"
            "print('@', main(['model', 'info', 'shapes']))\n"
            "print('@', 'torch' in sys.modules and sys.modules['torch'] is not None)")
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    ours = [line[2:] for line in proc.stdout.splitlines() if line.startswith("@ ")]  # not the commands' own
    commands, data, check_rc, info_rc, torch_loaded = ours
    expected = {"generate", "caption", "studio", "data", "train", "export", "model", "bench"}
    assert expected <= set(eval(commands))
    assert "check" in eval(data)
    assert (check_rc, info_rc, torch_loaded) == ("0", "1", "False")
    assert proc.stderr.strip().splitlines()[-1] == (
        'tessera: error: this command needs torch: pip install "tessera-studio[train]"')


def test_a_real_import_error_is_not_swallowed(monkeypatch):
    def broken():  # loading a command module that has a bug
        import engine.no_such_module  # noqa: F401

    monkeypatch.setattr(cli, "_registrars", lambda: [broken])
    with pytest.raises(ModuleNotFoundError, match="engine.no_such_module"):
        cli.build_parser()


def test_a_package_left_out_of_an_install_only_drops_its_commands(monkeypatch):
    def absent():
        raise ModuleNotFoundError("No module named 'training'", name="training")

    monkeypatch.setattr(cli, "_registrars", lambda: [absent])
    assert cli.build_parser().parse_args([]).command is None
