"""The menu of per-layer compression levels an agent chooses from.

One Discrete menu rather than a MultiDiscrete (heads, ffn, int8, drop) action: the cost
of a layer is a property of the whole combination (int8 and pruning do not add up), so
a menu lets the latency table price each choice exactly, and masking an over-budget
choice is masking one entry instead of reasoning about combinations of sub-actions.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Level:
    group_keep: float = 1.0  # fraction of attention groups kept
    neuron_keep: float = 1.0  # fraction of FFN neurons kept
    int8: bool = False
    drop: bool = False  # remove the layer entirely (the other fields are then ignored)

    @property
    def name(self) -> str:
        if self.drop:
            return "drop"
        parts = [f"h{round(self.group_keep * 100)}", f"f{round(self.neuron_keep * 100)}"]
        return "-".join(parts) + ("-int8" if self.int8 else "")

    def to_dict(self) -> dict:
        return asdict(self)


KEEP_FRACTIONS = (1.0, 0.75, 0.5, 0.25)


def group_fractions(groups: int | None) -> tuple[float, ...]:
    """The fractions of a layer's attention groups a menu keeps: KEEP_FRACTIONS, or, when a
    layer has no more groups than that (grouped-query attention: SmolLM2 has 3), every
    whole number of groups, so that no two levels keep the same."""
    if groups is None or groups > len(KEEP_FRACTIONS):
        return KEEP_FRACTIONS
    return tuple(k / groups for k in range(groups, 0, -1))


def default_menu(allow_drop: bool = True, allow_int8: bool = True, groups: int | None = None) -> list[Level]:
    """Dense first; every combination of kept groups (see group_fractions) and neurons,
    with and without int8; then dropping the layer."""
    menu = [
        Level(group_keep=g, neuron_keep=f, int8=q)
        for q, g, f in itertools.product((False, True) if allow_int8 else (False,), group_fractions(groups), KEEP_FRACTIONS)
    ]
    if allow_drop:
        menu.append(Level(drop=True))
    return menu


def drop_index(menu: list[Level]) -> int | None:
    """Where `menu` offers to drop the layer, or None if it does not."""
    return next((i for i, level in enumerate(menu) if level.drop), None)
