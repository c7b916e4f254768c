"""Sub-commands of ``python -m pet_dl``: one module per command.

Each module exposes ``add_parser(subparsers) -> None`` and ``run(args) -> int`` and keeps
its heavy imports inside ``run`` so that ``--help`` is fast. :mod:`pet_dl.cli` finds the
modules listed in :data:`COMMANDS` (a missing one is skipped); a module may register a
command under another name (``import_scan`` registers ``import``, a Python keyword).
"""

COMMANDS: tuple[str, ...] = (
    "simulate", "recon", "evaluate", "dataset", "demo", "export", "import_scan",
)
