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
    states = native.check(root=tmp_path, manifest=manifest)
    assert set(states.values()) == {"interpreted", "absent"}  # no Rust steps: their references run
    assert states[native.CRATE + "/"] == "absent"
    with pytest.raises(RuntimeError, match=f"not compiled: {native.MODULES[0]}, {native.MODULES[1]}.*fastpath/"):
        native.check(require=True, root=tmp_path, manifest=manifest)


def _fake_crate(root: Path) -> None:
    (root / native.CRATE / "src").mkdir(parents=True)
    (root / native.CRATE / "Cargo.toml").write_text("[package]\n")
    (root / native.CRATE / "src" / "lib.rs").write_text("// lib\n")
    (root / (native.CRATE_MODULE + native.SUFFIXES[0])).write_bytes(b"\x7fELF")


def test_the_rust_steps_are_stale_once_any_of_its_sources_changed(tmp_path: Path) -> None:
    manifest = _fake_tree(tmp_path)
    _fake_crate(tmp_path)
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({native.CRATE + "/": native._crate_digest(tmp_path)}))  # noqa: SLF001
    assert native.status(tmp_path, manifest)[native.CRATE + "/"] == "compiled"
    (tmp_path / native.CRATE / "src" / "intent.rs").write_text("// a new file\n")
    assert native.status(tmp_path, manifest)[native.CRATE + "/"] == "stale"
    with pytest.raises(RuntimeError, match="older than their source: fastpath/"):
        native.check(root=tmp_path, manifest=manifest)


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
    assert capsys.readouterr().out.split() == [*native.MODULES, *native.crate_sources()]
    assert "fastpath/src/intent.rs" in native.crate_sources()  # a changed Rust source rebuilds too


def test_the_rust_steps_loaded_are_the_ones_status_names() -> None:
    from auction.fastpath import Intake, Writer, hot_path  # noqa: PLC0415

    built = native.status()[native.CRATE + "/"] == "compiled"
    assert hot_path(Intake(), Writer()) == ("compiled" if built else "reference")


def test_a_build_without_a_rust_toolchain_succeeds_with_the_references(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "build", lambda quiet: None)
    monkeypatch.setattr(native, "status", lambda: {native.MODULES[0]: "compiled", native.CRATE + "/": "absent"})
    assert native.main(["build", "-q"]) == 0
    monkeypatch.setattr(native, "status", lambda: {native.MODULES[0]: "compiled", native.CRATE + "/": "stale"})
    assert native.main(["build", "-q"]) == 1
