"""The menu of per-layer compression levels an agent chooses from.

One Discrete menu rather than a MultiDiscrete (heads, ffn, int8, drop) action: the cost
of a layer is a property of the whole combination (int8 and pruning do not add up), so
a menu lets the latency table price each choice exactly, and masking an over-budget
choice is masking one entry instead of reasoning about combinations of sub-actions.

Level is the one place that knows a level's fields and its names: the display name
("h50-f75-int8", "h50-f75-int4"), read back with Level.from_name, and the short one of
the terminal summary ("h50f75q", "h50f75q4"). Nothing else builds or parses them.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from ppocompress.compress import Precision

# How much of a layer a level in each precision counts as keeping, in the plans' heatmaps.
KEPT_SHARE = {Precision.FLOAT: 1.0, Precision.INT8: 0.6, Precision.INT4: 0.35}
SHORT_SUFFIX = {Precision.FLOAT: "", Precision.INT8: "q", Precision.INT4: "q4"}
SHORT_NAME_KEY = "h/f: % of attention groups / FFN neurons kept, q: int8, q4: int4, -: dropped"
KEPT_SHARE_KEY = (f"brighter = more of the layer kept; int8 counts as {KEPT_SHARE[Precision.INT8]:g}, "
                  f"int4 as {KEPT_SHARE[Precision.INT4]:g}")
DROP_NAME = "drop"
_NAME = re.compile(r"h(\d+)-f(\d+)(?:-(int8|int4))?")


@dataclass(frozen=True)
class Level:
    group_keep: float = 1.0  # fraction of attention groups kept
    neuron_keep: float = 1.0  # fraction of FFN neurons kept
    weights: Precision = Precision.FLOAT
    drop: bool = False  # remove the layer entirely (the other fields are then ignored)

    @property
    def name(self) -> str:
        """"h50-f75-int8": % of attention groups and of FFN neurons kept, and the weights'
        precision when not floating point; "drop"."""
        if self.drop:
            return DROP_NAME
        name = f"h{round(self.group_keep * 100)}-f{round(self.neuron_keep * 100)}"
        return name if self.weights == Precision.FLOAT else f"{name}-{self.weights.value}"

    @classmethod
    def from_name(cls, name: str) -> "Level":
        """The level a name says (its fractions as the name rounds them); ValueError for a name
        no level has."""
        if name == DROP_NAME:
            return cls(drop=True)
        match = _NAME.fullmatch(name)
        if match is None:
            raise ValueError(f"{name!r} is not the name of a level")
        return cls(int(match[1]) / 100, int(match[2]) / 100, weights=Precision(match[3] or Precision.FLOAT))

    @property
    def short_name(self) -> str:
        """The name in a few characters (see SHORT_NAME_KEY): "h50f25q", "-" for a dropped layer."""
        if self.drop:
            return "-"
        return f"h{round(self.group_keep * 100)}f{round(self.neuron_keep * 100)}{SHORT_SUFFIX[self.weights]}"

    @property
    def kept_share(self) -> float:
        """How much of the layer the level keeps, 0 to 1, for a heatmap's colour (KEPT_SHARE_KEY)."""
        if self.drop:
            return 0.0
        return (self.group_keep + self.neuron_keep) / 2 * KEPT_SHARE[self.weights]

    def to_dict(self) -> dict:
        return {"group_keep": self.group_keep, "neuron_keep": self.neuron_keep, "weights": self.weights.value,
                "drop": self.drop}


KEEP_FRACTIONS = (1.0, 0.75, 0.5, 0.25)


def group_fractions(groups: int | None) -> tuple[float, ...]:
    """The fractions of a layer's attention groups a menu keeps: KEEP_FRACTIONS, or, when a
    layer has no more groups than that (grouped-query attention: SmolLM2 has 3), every
    whole number of groups, so that no two levels keep the same."""
    if groups is None or groups > len(KEEP_FRACTIONS):
        return KEEP_FRACTIONS
    return tuple(k / groups for k in range(groups, 0, -1))


ENCODER_PRECISIONS = (Precision.FLOAT, Precision.INT8)  # int4 does not pay at an encoder's batch sizes
DECODER_PRECISIONS = (Precision.FLOAT, Precision.INT8, Precision.INT4)  # where the runtime serves int4


def default_menu(allow_drop: bool = True, precisions: tuple[Precision, ...] = ENCODER_PRECISIONS,
                 groups: int | None = None) -> list[Level]:
    """Dense first; every combination of kept groups (see group_fractions) and neurons, in
    each of `precisions`; then dropping the layer."""
    menu = [
        Level(group_keep=g, neuron_keep=f, weights=w)
        for w, g, f in itertools.product(precisions, group_fractions(groups), KEEP_FRACTIONS)
    ]
    if allow_drop:
        menu.append(Level(drop=True))
    return menu


DENSE = 0  # the menu's index of the dense level (default_menu lists it first)
DENSE_INT8_LEVEL = Level(weights=Precision.INT8)  # every unit kept, in int8: what quantizing alone gives
DENSE_INT4_LEVEL = Level(weights=Precision.INT4)


def drop_index(menu: list[Level]) -> int | None:
    """Where `menu` offers to drop the layer, or None if it does not."""
    return next((i for i, level in enumerate(menu) if level.drop), None)
