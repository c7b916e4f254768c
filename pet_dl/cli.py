"""``python -m pet_dl {simulate,recon,evaluate,dataset,demo}`` (also the ``pet-dl`` script).

One argparse parser with a sub-command per module in :mod:`pet_dl.commands`. Errors a
user can cause (:class:`pet_dl.errors.PetDLError`, ``ValueError`` from input checks, a
missing input file, any ``OSError`` such as a read-only output folder or a full disk, and
``MemoryError``) are printed as one line ``error: <message>`` on stderr with exit code 2;
every command writes its outputs atomically, so a failed run leaves no file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Sequence
from types import ModuleType

from pet_dl import __version__
from pet_dl.commands import COMMANDS
from pet_dl.errors import PetDLError

EXIT_USAGE = 2


def _command_modules() -> dict[str, ModuleType]:
    """The available command modules, by name (modules not present are skipped)."""
    modules = {}
    for name in COMMANDS:
        full = f"pet_dl.commands.{name}"
        try:
            modules[name] = importlib.import_module(full)
        except ModuleNotFoundError as exc:
            if exc.name != full:  # a real missing dependency inside the module: report it
                raise
    return modules


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line: ``error: ... (see --help)``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message} (see --help)\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    """The top-level parser and the command modules it dispatches to."""
    parser = _Parser(
        prog="pet_dl",
        description="pet_dl: PET simulation, classical and learned reconstruction.",
    )
    parser.add_argument("--version", action="version", version=f"pet_dl {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = _command_modules()
    for module in modules.values():
        module.add_parser(subparsers)
    return parser, modules


# The temporary name of pet_dl.io.atomic (.NAME.tmp-1a2b3c4d.SUFFIX): reported as NAME.
_ATOMIC_TMP = re.compile(r"(^|/)\.([^/]+?)\.tmp-[0-9a-f]{8}[^/]*$")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        name = _ATOMIC_TMP.sub(r"\1\2", str(exc.filename))
        text = f"{name}: {exc.strerror}"
    elif isinstance(exc, MemoryError):
        text = f"out of memory{': ' + text if text else ''} (a smaller scan, or more memory)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines) if lines else type(exc).__name__


def _out_of_memory(exc: RuntimeError) -> bool:
    """torch's CPU allocator ("can't allocate memory") or CUDA's ("out of memory")."""
    text = str(exc)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input, 130 interrupted).

    Before torch is first imported, ``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` (unless
    set): torch's OpenMP threads otherwise spin against numba's projector threads, which
    makes small tensor operations 10-50x slower on machines with few cores.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser, modules = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    run = getattr(args, "run", None) or modules[args.command].run
    try:
        return int(run(args) or 0)
    except (PetDLError, ValueError, OSError, MemoryError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as exc:  # torch's allocators report running out of memory so
        if not _out_of_memory(exc):
            raise
        print(f"error: {_one_line(MemoryError(_one_line(exc)))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
