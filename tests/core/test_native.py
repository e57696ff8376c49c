"""The compiled hot path: what runs is what the source says (core/native.py)."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

import pytest

from core import native


def _fake_tree(root: Path) -> Path:
    for source in native.MODULES:
        (root / source).parent.mkdir(parents=True, exist_ok=True)
        (root / source).write_text(f"# {source}\n")
    return root / "build" / "native-manifest.json"


def _compile(root: Path, source: str) -> None:
    (root / source).with_suffix(native.SUFFIXES[0]).write_bytes(b"\x7fELF")


def test_status_tells_compiled_stale_and_interpreted(tmp_path: Path) -> None:
    manifest = _fake_tree(tmp_path)
    fresh, old = native.MODULES[0], native.MODULES[1]
    for source in (fresh, old):
        _compile(tmp_path, source)
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({
        source: hashlib.sha256((tmp_path / source).read_bytes()).hexdigest() for source in (fresh, old)
    }))
    (tmp_path / old).write_text("# edited after the build\n")

    states = native.status(tmp_path, manifest)
    assert states[fresh] == "compiled"
    assert states[old] == "stale"
    assert all(states[source] == "interpreted" for source in native.MODULES[2:])
    with pytest.raises(RuntimeError, match=f"older than their source: {old}"):
        native.check(root=tmp_path, manifest=manifest)


def test_check_can_require_everything_compiled(tmp_path: Path) -> None:
    manifest = _fake_tree(tmp_path)
    assert set(native.check(root=tmp_path, manifest=manifest).values()) == {"interpreted"}
    with pytest.raises(RuntimeError, match=f"not compiled: {native.MODULES[0]}, {native.MODULES[1]}"):
        native.check(require=True, root=tmp_path, manifest=manifest)


def test_a_build_without_manifest_counts_as_stale(tmp_path: Path) -> None:
    manifest = _fake_tree(tmp_path)
    _compile(tmp_path, native.MODULES[0])
    assert native.status(tmp_path, manifest)[native.MODULES[0]] == "stale"


@pytest.mark.parametrize("source", native.MODULES)
def test_the_loaded_module_is_the_one_status_names(source: str) -> None:
    """Compiled modules are imported from their extension, interpreted ones from the source."""
    module = importlib.import_module(source.removesuffix(".py").replace("/", "."))
    loaded = str(module.__file__)
    if native.status()[source] == "compiled":
        assert loaded.endswith(native.SUFFIXES), loaded
    else:
        assert loaded.endswith(".py"), loaded


def test_sources_lists_the_modules_for_the_makefile(capsys: pytest.CaptureFixture[str]) -> None:
    assert native.main(["sources"]) == 0
    assert capsys.readouterr().out.split() == list(native.MODULES)
