"""The structure stays visible: no import cycle between modules (the layers themselves are
import-linter's contract in pyproject.toml, run by `make lint`)."""

from __future__ import annotations

import grimp

PACKAGES = ("core", "schemas", "auction", "autopilot", "streams", "vickrey", "loadtests")


def test_no_import_cycles_between_modules() -> None:
    graph = grimp.build_graph(*PACKAGES)
    cycles = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                cycles.add(" -> ".join((module, *back)))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles))


def test_the_bottom_imports_nothing_above_it() -> None:
    graph = grimp.build_graph(*PACKAGES)
    below_first = ("schemas", "core", "auction", "autopilot", "streams", "vickrey", "loadtests")
    for level, lower in enumerate(below_first):
        for higher in below_first[level + 1 :]:
            chain = graph.find_shortest_chain(importer=lower, imported=higher, as_packages=True)
            assert chain is None, f"{lower} imports {higher}: {' -> '.join(chain or ())}"
