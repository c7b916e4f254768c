"""Sub-commands of ``python -m pet_dl``: one module per command.

Each module exposes ``add_parser(subparsers) -> None`` and ``run(args) -> int`` and keeps
its heavy imports inside ``run`` so that ``--help`` is fast. :mod:`pet_dl.cli` finds the
modules listed in :data:`COMMANDS` (a missing one is skipped); a module may register a
command under another name (``import_scan`` registers ``import``, a Python keyword).
"""

COMMANDS: tuple[str, ...] = (
    "simulate", "recon", "evaluate", "dataset", "demo", "export", "import_scan",
)


def name_value(text: str, flag: str, form: str = "NAME=VALUE") -> tuple[str, str]:
    """``"NAME=VALUE"`` -> ``(name, value)``, both stripped and non-empty (the value may hold
    ``=``); otherwise :class:`pet_dl.errors.InvalidInputError` naming ``flag`` and ``form``."""
    from pet_dl.errors import InvalidInputError

    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise InvalidInputError(f"{flag} needs {form}, got {text!r}")
    return name.strip(), value.strip()
