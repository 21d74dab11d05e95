"""The search's PPO policy on disk: the agent (safetensors and JSON, as rl saves it), the
menu of levels its actions index, and the plans its run scored. A later run starts from it
(`compress --policy DIR`): another target on the same model, where the scored plans are
reused at no cost when they were scored the same way, or another model whose menu is the
same."""

from __future__ import annotations

import json
from pathlib import Path

from ppocompress.errors import UserError
from ppocompress.fileio import atomic_write_text, read_json_object
from ppocompress.rl import PPO
from ppocompress.search.levels import Level
from ppocompress.search.plan import Plan, level_names

MENU_FILE = "menu.json"  # {"levels": the menu's level names}
PLANS_FILE = "plans.json"  # {"scored_with": PlanEvaluator.identity, "rewards": {Plan.key(): reward}}
POLICY_HINT = "pass the policy folder of a compress run's --out"


def save_policy(agent, directory: Path, menu: list[Level], rewards: dict[Plan, float], scored_with: str) -> None:
    agent.save(directory)
    atomic_write_text(directory / MENU_FILE, json.dumps({"levels": level_names(menu)}))
    atomic_write_text(directory / PLANS_FILE, json.dumps({"scored_with": scored_with,
                                                          "rewards": {plan.key(): reward for plan, reward in rewards.items()}}))


def scored_plans(directory: Path, scored_with: str) -> dict[Plan, float] | None:
    """The rewards of the plans the policy's run scored, if they were scored as this run
    scores them (same model, menu, calibration text, recovery and int8); else None."""
    path = Path(directory) / PLANS_FILE
    if not path.is_file():
        return None
    saved = read_json_object(path, "search policy plans", POLICY_HINT)
    rewards = saved.get("rewards")
    if saved.get("scored_with") != scored_with or not isinstance(rewards, dict):
        return None
    try:
        return {Plan.from_key(str(key)): float(reward) for key, reward in rewards.items()}
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path} does not hold plans and their rewards ({exc}); {POLICY_HINT}") from None


def load_policy(directory: Path, menu: list[Level]):
    """The saved agent; a UserError unless it chooses among the levels of `menu` (a run
    loads it once as soon as it knows its model's menu, before any long step)."""
    directory = Path(directory)
    if not (directory / MENU_FILE).is_file():
        raise UserError(f"{directory} holds no search policy (no {MENU_FILE}); {POLICY_HINT}")
    saved = read_json_object(directory / MENU_FILE, "search policy menu", POLICY_HINT).get("levels")
    names = level_names(menu)
    if saved != names:
        count = len(saved) if isinstance(saved, list) else 0
        raise UserError(f"the policy in {directory} chooses among {count} levels, this model's menu has {len(names)} "
                        f"(or other ones); a policy acts only on the menu it was trained on")
    return PPO.load(directory)
