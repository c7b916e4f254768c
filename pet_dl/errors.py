"""User-facing errors.

Every error that a user can cause with bad input derives from :class:`PetDLError`, so the
command lines can print it as one line (``error: <message>``) and exit with code 2.
The subclasses that describe bad values also derive from :class:`ValueError`, so code
that expects the standard exception keeps working.
"""

from __future__ import annotations


class PetDLError(Exception):
    """Base class of the errors that pet_dl reports to users (one-line message)."""


class InvalidInputError(PetDLError, ValueError):
    """An input value is out of range or malformed (negative activity, fraction > 1, ...)."""


class UnitsError(InvalidInputError):
    """An input looks like it is in the wrong units (mu in 1/cm or HU instead of 1/mm)."""


class GeometryError(InvalidInputError):
    """Shapes or grids do not match each other or the scanner (image outside the FOV, ...)."""
