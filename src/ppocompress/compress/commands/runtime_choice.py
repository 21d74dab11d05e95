"""What a command's --runtime names: one runtime, or auto for every one that can run here."""

from __future__ import annotations

from collections.abc import Callable

from ppocompress.compress.runtimes import AUTO, CHOICES, available_runtimes, get_runtime, no_generation
from ppocompress.errors import UserError


def check_runtime(choice: str) -> None:
    """A mistyped --runtime fails before the model loads."""
    if choice not in CHOICES:
        raise UserError(f"unknown runtime {choice!r}; use one of {', '.join(CHOICES)}")


def runtimes_for(choice: str, causal: bool, log: Callable[[str], None] = print) -> list[str]:
    """--runtime NAME: that one (a UserError if it cannot run here, or cannot serve a causal
    LM); auto: every one that can, each one that cannot named in a line to `log`."""
    check_runtime(choice)
    if choice == AUTO:
        return [runtime.name for runtime in available_runtimes(log=log, causal=causal)]
    runtime = get_runtime(choice)
    runtime.require()
    if causal and no_generation(runtime):
        raise UserError(no_generation(runtime) + "; pass --runtime torch or auto")
    return [choice]
