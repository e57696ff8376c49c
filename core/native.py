"""The compiled hot path: the pure modules the worker runs once per event, built with mypyc,
and the worker's intake and record writer in Rust (fastpath/, `auction._fastpath`; auction/fastpath.py).

`make native` (part of `make venv`; `python -m core.native build`) compiles them in place: a
`<module>.cpython-311-*.so` beside each `.py`, which Python then imports instead of the source.
The source is the only definition (mypy-strict typed code that mypyc turns into C); where
nothing was built the same source runs interpreted, about half as fast. The Rust crate is built
with cargo when a Rust toolchain is installed; without one those two steps run their Python
references (the same results, slower) and `status` says `absent`.

A compiled module whose source changed after the build is *stale*: Python would still load the
old machine code and silently run what the file no longer says. The build records a hash of
every source; `check()` names the modules whose source moved on, and the worker and the test
suite refuse to run them (`make native` again fixes it).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Pure, strictly typed modules on the per-event path, in dependency order.
MODULES = (
    "auction/interning.py",
    "auction/keywords.py",
    "auction/model.py",
    "auction/pricing.py",
    "auction/pacing.py",
    "auction/index.py",
    "auction/engine.py",
    "auction/twin.py",
    "auction/records.py",
    "auction/budgets.py",
    "auction/people.py",
    "auction/worker_metrics.py",
    "auction/worker.py",
    "schemas/checks.py",
    "schemas/records.py",
    "schemas/codec.py",
    "core/partition.py",
    "core/kafka.py",
)
# The Rust crate of the compiled steps, and the extension module it becomes.
CRATE = "fastpath"
CRATE_MODULE = "auction/_fastpath"
CARGO_TARGET = ROOT / "build" / "cargo"
# mypyc puts the modules' shared code in one library named after the group, in its package.
GROUP = "auction.native"
MANIFEST = ROOT / "build" / "native-manifest.json"
# Where a quiet build (`build -q`, as make runs it) writes what mypyc, setuptools and the compiler say.
BUILD_LOG = ROOT / "build" / "native" / "build.log"
SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def crate_sources(root: Path = ROOT) -> list[str]:
    """The files the Rust build reads (relative to the root), in a stable order."""
    crate = root / CRATE
    found = [crate / "Cargo.toml", crate / "Cargo.lock", *sorted((crate / "src").rglob("*.rs"))]
    return [str(path.relative_to(root)) for path in found if path.exists()]


def _crate_digest(root: Path = ROOT) -> str:
    digest = hashlib.sha256()
    for source in crate_sources(root):
        digest.update(source.encode() + b"\0" + (root / source).read_bytes() + b"\0")
    return digest.hexdigest()


def _built(source: str, root: Path = ROOT) -> list[Path]:
    stem = (root / source).with_suffix("")
    found = (stem.with_name(stem.name + suffix) for suffix in SUFFIXES)
    return [path for path in found if path.exists()]


def status(root: Path = ROOT, manifest: Path = MANIFEST) -> dict[str, str]:
    """Each module: `compiled` (built from its current source), `stale` (built from an older
    source) or `interpreted` (nothing built)."""
    try:
        hashes: dict[str, str] = json.loads(manifest.read_text())
    except (OSError, ValueError):
        hashes = {}
    out = {}
    for source in MODULES:
        if not _built(source, root):
            out[source] = "interpreted"
        elif hashes.get(source) == _digest(root / source):
            out[source] = "compiled"
        else:
            out[source] = "stale"
    if not _built(CRATE_MODULE, root):
        out[CRATE + "/"] = "absent"  # the Python references of its steps run
    else:
        out[CRATE + "/"] = "compiled" if hashes.get(CRATE + "/") == _crate_digest(root) else "stale"
    return out


def check(require: bool = False, root: Path = ROOT, manifest: Path = MANIFEST) -> dict[str, str]:
    """The status, after refusing machine code that no longer matches its source (and, with
    `require`, source that runs interpreted: CI and benchmarks measure what ships)."""
    states = status(root, manifest)
    old = [source for source, state in states.items() if state == "stale"]
    if old:
        raise RuntimeError(
            f"compiled modules are older than their source: {', '.join(old)}; run `make native` "
            "(or `make clean-native` to run them interpreted)"
        )
    # Without `require`, absent Rust steps are not refused: their Python references run instead.
    missing = [source for source, state in states.items() if state in ("interpreted", "absent")]
    if require and missing:
        raise RuntimeError(f"not compiled: {', '.join(missing)}; run `make native` (needs gcc, the Python "
                           "headers and, for fastpath/, a Rust toolchain)")
    return states


def clean() -> int:
    """Remove every compiled module of the packages (also of modules no longer in MODULES)."""
    removed = 0
    for package in sorted({source.partition("/")[0] for source in MODULES}):
        for suffix in SUFFIXES:
            for path in (ROOT / package).glob("*" + suffix):
                path.unlink()
                removed += 1
    MANIFEST.unlink(missing_ok=True)
    return removed


def build(quiet: bool = False) -> None:
    """Compile MODULES in place with mypyc (needs a C compiler and the Python headers).

    `quiet`: mypyc's, setuptools' and the compiler's output goes to BUILD_LOG instead of the
    terminal; a failed build shows the end of that log and says where the whole of it is."""
    from mypyc.build import mypycify
    from setuptools import setup

    clean()  # nothing left over from an earlier list of modules
    started = time.monotonic()
    where = f" (output in {BUILD_LOG.relative_to(ROOT)})" if quiet else ""
    print(f"compiling {len(MODULES)} modules with mypyc (under a minute){where} ...", flush=True)
    hashes = {source: _digest(ROOT / source) for source in MODULES}
    crate_digest = _crate_digest()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with _output_to(BUILD_LOG) if quiet else contextlib.nullcontext():
            extensions = mypycify(list(MODULES), opt_level="3", group_name=GROUP, verbose=True)
            setup(
                name="vickrey-native",
                ext_modules=extensions,
                script_args=["build_ext", "--inplace", "--build-temp", "build/native"],
            )
    finally:
        os.chdir(cwd)
    print(f"compiled in {time.monotonic() - started:.0f} s: {', '.join(MODULES)}", flush=True)
    # The mypyc modules are recorded before cargo runs: a failed Rust build leaves them usable.
    MANIFEST.parent.mkdir(parents=True, exist_ok=True)
    MANIFEST.write_text(json.dumps(hashes, indent=1))
    if _build_crate(quiet):
        MANIFEST.write_text(json.dumps({**hashes, CRATE + "/": crate_digest}, indent=1))


def _build_crate(quiet: bool) -> bool:
    """Build the Rust steps (fastpath/) with cargo (release, into build/cargo) and put the extension module
    beside the package's sources. False, with a word, when no Rust toolchain is installed."""
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    if not Path(cargo).exists():
        print("no Rust toolchain (cargo): the intake and the record writer run their Python reference; "
              "https://rustup.rs installs one, then `make native`", flush=True)
        return False
    started = time.monotonic()
    print(f"building the Rust steps ({CRATE}/) with cargo (about a minute the first time) ...", flush=True)
    # --locked: the versions of Cargo.lock (in the source hash), never a lock file rewritten on the way.
    command = [cargo, "build", "--release", "--locked", "--manifest-path", str(ROOT / CRATE / "Cargo.toml")]
    environment = {**os.environ, "CARGO_TARGET_DIR": str(CARGO_TARGET), "PYO3_PYTHON": sys.executable}
    BUILD_LOG.parent.mkdir(parents=True, exist_ok=True)
    with BUILD_LOG.open("ab") if quiet else contextlib.nullcontext() as log:
        done = subprocess.run(command + (["--quiet"] if quiet else []), env=environment, check=False,
                              stdout=log, stderr=subprocess.STDOUT if quiet else None)
    if done.returncode:
        if quiet:
            lines = BUILD_LOG.read_text(encoding="utf-8", errors="replace").splitlines()
            print("\n".join(lines[-40:]), file=sys.stderr)
        raise SystemExit(f"native build failed: cargo exited with {done.returncode}"
                         + (f", its output is in {BUILD_LOG}" if quiet else ""))
    library = CARGO_TARGET / "release" / {"darwin": "lib_fastpath.dylib", "win32": "_fastpath.dll"}.get(
        sys.platform, "lib_fastpath.so")
    target = ROOT / (CRATE_MODULE + SUFFIXES[0])
    shutil.copyfile(library, target)
    print(f"built {target.relative_to(ROOT)} in {time.monotonic() - started:.0f} s", flush=True)
    return True


@contextlib.contextmanager
def _output_to(log: Path, tail: int = 40) -> Iterator[None]:
    """Everything written to stdout and stderr meanwhile, by Python or by child processes (the C
    compiler), goes to `log`. On a failure (mypyc and setuptools exit with SystemExit) the log
    gets the error, its last `tail` lines are shown, and SystemExit names the whole log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    failure: BaseException | None = None
    with log.open("wb") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        try:
            yield
        except (Exception, SystemExit) as error:  # a failed build: keep its message in the log
            failure = error
            sys.stdout.flush()
            sys.stderr.flush()
            if not isinstance(error, SystemExit):
                traceback.print_exc()
            elif error.code not in (None, 0, 1):
                print(error.code, file=sys.stderr)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in ((1, saved[0]), (2, saved[1])):
                os.dup2(copy, fd)
                os.close(copy)
    if failure is None:
        return
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    print("\n".join(lines[-tail:]), file=sys.stderr)
    shown = "its output is above" if len(lines) <= tail else f"the last {tail} lines of its output are above"
    raise SystemExit(f"native build failed: {shown}, all of it is in {log}") from failure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.native", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("build", "status", "clean", "sources"),
                        help="compile, show what runs compiled, remove the builds, or list the compiled sources")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help=f"build: compiler output to {BUILD_LOG.relative_to(ROOT)} (shown if the build fails)")
    args = parser.parse_args(argv)
    if args.command == "sources":  # for the Makefile's dependencies
        print(" ".join([*MODULES, *crate_sources()]))
        return 0
    if args.command == "build":
        build(args.quiet)
    elif args.command == "clean":
        print(f"removed {clean()} files; the modules run interpreted")
    states = status()
    # A quiet build already named what it compiled: the table only when something is not compiled.
    if not (args.command == "build" and args.quiet and all(s in ("compiled", "absent") for s in states.values())):
        for source, state in states.items():
            print(f"{state:12} {source}")
    # An absent Rust build (no toolchain) is not a failed build: the references run.
    return 1 if args.command == "build" and any(s not in ("compiled", "absent") for s in states.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
