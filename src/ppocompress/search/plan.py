"""A search plan, and every form it takes: one module, so that nothing else writes or reads
a plan's forms by hand.

A Plan is a level per layer, each an index into the menu (levels.py); frozen and hashable,
so it is its own cache key. Its forms:
- the menu indices: Plan.of(indices), plan.levels (iterating a plan gives them too);
- its key in the search state and a policy's plans.json, "3,0,5": plan.key(), Plan.from_key;
- JSON, a list of indices (the state's finished searches, result.json's evaluated plans):
  plan.to_json(), Plan.from_json;
- the menu's levels it chooses and their display names: plan.chosen(menu), plan.names(menu);
- read back from a file that names levels: levels_from_names(names), Plan.from_names(names, menu).
A level's own names are Level's (levels.py). The engine's plan of the units each layer
keeps (compress.CompressionPlan) is made from a Plan by PlanEvaluator.plan (evaluator.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from ppocompress.search.levels import Level

KEY_SEPARATOR = ","


@dataclass(frozen=True)
class Plan:
    levels: tuple[int, ...]  # each layer's level, an index into the menu

    @classmethod
    def of(cls, levels: Iterable[int]) -> "Plan":
        """From any iterable of menu indices (numpy's included)."""
        return cls(tuple(int(level) for level in levels))

    @classmethod
    def uniform(cls, level: int, num_layers: int) -> "Plan":
        """The same level in every layer."""
        return cls((level,) * num_layers)

    def with_levels(self, changes: dict[int, int]) -> "Plan":
        """This plan with some layers (the keys) at other levels (the values)."""
        return Plan(tuple(changes.get(layer, level) for layer, level in enumerate(self.levels)))

    def __iter__(self) -> Iterator[int]:
        return iter(self.levels)

    def __len__(self) -> int:
        return len(self.levels)

    def __getitem__(self, layer: int) -> int:
        return self.levels[layer]

    def key(self) -> str:
        return KEY_SEPARATOR.join(str(level) for level in self.levels)

    @classmethod
    def from_key(cls, key: str) -> "Plan":
        """ValueError unless `key` is a key() ("3,0,5")."""
        return cls(tuple(int(level) for level in key.split(KEY_SEPARATOR)))

    def to_json(self) -> list[int]:
        return list(self.levels)

    @classmethod
    def from_json(cls, data) -> "Plan":
        """ValueError unless `data` is a list of whole numbers."""
        if not isinstance(data, list) or not all(isinstance(level, int) and not isinstance(level, bool) for level in data):
            raise ValueError(f"a plan is a list of menu indices, not {data!r}")
        return cls(tuple(data))

    def chosen(self, menu: Sequence[Level]) -> tuple[Level, ...]:
        """Each layer's level."""
        return tuple(menu[level] for level in self.levels)

    def names(self, menu: Sequence[Level]) -> list[str]:
        """Each layer's level by its display name."""
        return level_names(self.chosen(menu))

    @classmethod
    def from_names(cls, names: Iterable[str], menu: Sequence[Level]) -> "Plan":
        """The plan whose levels `names` names, in `menu`; ValueError for a name the menu lacks."""
        index = {name: i for i, name in enumerate(level_names(menu))}
        try:
            return cls(tuple(index[name] for name in names))
        except KeyError as missing:
            raise ValueError(f"the menu has no level {missing.args[0]!r}") from None


def level_names(levels: Iterable[Level]) -> list[str]:
    """The display names of levels: a plan's as a file records it, or a menu's."""
    return [level.name for level in levels]


def levels_from_names(names: Iterable[str]) -> tuple[Level, ...]:
    """The levels a file named (ValueError for a name no level has)."""
    return tuple(Level.from_name(name) for name in names)
