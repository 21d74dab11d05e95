"""A search plan's forms: every conversion in search/plan.py gives back the plan it came
from, and a level's name gives back the level it names."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppocompress.compress import Precision
from ppocompress.search.levels import SHORT_NAME_KEY, Level, default_menu
from ppocompress.search.plan import Plan, level_names, levels_from_names

MENUS = [default_menu(groups=groups) for groups in (None, 1, 2, 3, 4, 12)] + [
    default_menu(allow_drop=False, precisions=(Precision.FLOAT,)), default_menu(precisions=tuple(Precision), groups=3)]


@st.composite
def menus_and_plans(draw):
    menu = draw(st.sampled_from(MENUS))
    return menu, Plan.of(draw(st.lists(st.integers(0, len(menu) - 1), min_size=1, max_size=40)))


@settings(max_examples=200, deadline=None)
@given(menus_and_plans())
def test_every_form_of_a_plan_gives_the_plan_back(menu_and_plan):
    menu, plan = menu_and_plan
    assert Plan.from_key(plan.key()) == plan
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    assert Plan.from_names(plan.names(menu), menu) == plan
    assert levels_from_names(plan.names(menu)) == tuple(Level.from_name(name) for name in plan.names(menu))
    assert Plan.of(plan) == plan and list(plan) == list(plan.levels) and len(plan) == len(plan.levels)
    assert plan.chosen(menu) == tuple(menu[level] for level in plan)


@settings(max_examples=100, deadline=None)
@given(menus_and_plans(), st.data())
def test_equal_plans_are_one_cache_key_and_a_changed_layer_another(menu_and_plan, data):
    menu, plan = menu_and_plan
    layer = data.draw(st.integers(0, len(plan) - 1))
    other = data.draw(st.integers(0, len(menu) - 1).filter(lambda level: level != plan[layer]))
    changed = plan.with_levels({layer: other})
    assert {plan: 1, Plan.of(list(plan)): 2} == {plan: 2}
    assert changed != plan and changed.key() != plan.key() and changed[layer] == other
    assert [level for i, level in enumerate(changed) if i != layer] == [level for i, level in enumerate(plan) if i != layer]


@pytest.mark.parametrize("menu", MENUS)
def test_a_levels_name_gives_back_its_level_and_names_no_other(menu):
    names = level_names(menu)
    assert len(set(names)) == len(menu)
    for level in menu:
        read = Level.from_name(level.name)
        assert read.name == level.name and read.drop == level.drop and read.weights == level.weights
        assert read.group_keep == pytest.approx(level.group_keep, abs=0.005)
        assert read.neuron_keep == pytest.approx(level.neuron_keep, abs=0.005)


def test_levels_know_their_short_names_and_how_much_they_keep():
    assert Level(0.5, 0.25, weights=Precision.INT8).short_name == "h50f25q" and Level(drop=True).short_name == "-"
    assert Level().short_name == "h100f100" and all(part in SHORT_NAME_KEY for part in ("h/f", "q", "-"))
    assert Level().kept_share == 1.0 and Level(drop=True).kept_share == 0.0
    assert Level(0.5, 1.0).kept_share == 0.75 and Level(0.5, 1.0, weights=Precision.INT8).kept_share == pytest.approx(0.45)


@pytest.mark.parametrize("bad", ["", "h50", "h50-f", "x50-f50", "h50-f50-int2", "drop-int8", "H50-F50"])
def test_a_name_no_level_has_is_refused(bad):
    with pytest.raises(ValueError):
        Level.from_name(bad)


@pytest.mark.parametrize("bad", ["", "1,,2", "a,b", "1.5"])
def test_a_key_that_is_not_a_plan_is_refused(bad):
    with pytest.raises(ValueError):
        Plan.from_key(bad)


@pytest.mark.parametrize("bad", [None, "1,2", [1, "2"], [1.0, 2], [True, 0], {"levels": [1]}])
def test_json_that_is_not_a_plan_is_refused(bad):
    with pytest.raises(ValueError):
        Plan.from_json(bad)


def test_names_a_menu_lacks_are_refused():
    menu = default_menu(allow_drop=False)
    with pytest.raises(ValueError, match="'drop'"):
        Plan.from_names(["h100-f100", "drop"], menu)
