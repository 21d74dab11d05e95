"""The recovery methods a compressed model can be given, named once."""

from __future__ import annotations

from enum import StrEnum

from ppocompress.errors import UserError


class Recovery(StrEnum):
    NONE = "none"
    LSQ = "lsq"  # least squares (lsq.py)
    DISTILL = "distill"  # distillation (distillation.py)
    LSQ_DISTILL = "lsq+distill"  # least squares, then distillation from there

    @property
    def refits(self) -> bool:
        """Least squares is part of it."""
        return self in (Recovery.LSQ, Recovery.LSQ_DISTILL)

    @property
    def distills(self) -> bool:
        """Distillation is part of it."""
        return self in (Recovery.DISTILL, Recovery.LSQ_DISTILL)

    @classmethod
    def parse(cls, name: str | Recovery) -> Recovery:
        """The method called `name`, or one UserError line naming the choices (callers parse
        before any expensive step)."""
        try:
            return cls(name)
        except ValueError:
            raise UserError(f"unknown recovery {name!r}; use one of {', '.join(cls)}") from None
