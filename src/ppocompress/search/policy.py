"""The search's PPO policy on disk: the agent (safetensors and JSON, as rl saves it) and
the menu of levels its actions index. A later run starts from it (`compress --policy
DIR`): another target on the same model, or another model whose menu is the same."""

from __future__ import annotations

import json
from pathlib import Path

from ppocompress.errors import UserError
from ppocompress.fileio import atomic_write_text, read_json_object
from ppocompress.search.levels import Level

MENU_FILE = "menu.json"


def save_policy(agent, directory: Path, menu: list[Level]) -> None:
    agent.save(directory)
    atomic_write_text(directory / MENU_FILE, json.dumps({"levels": [level.name for level in menu]}))


def load_policy(directory: Path, menu: list[Level]):
    """The saved agent, if it chooses among the same levels as `menu`."""
    from ppocompress.rl import PPO

    directory = Path(directory)
    if not (directory / MENU_FILE).is_file():
        raise UserError(f"{directory} holds no search policy (no {MENU_FILE}); pass the policy folder of a compress run's --out")
    saved = read_json_object(directory / MENU_FILE, "search policy menu", "pass the policy folder of a compress run's --out").get("levels")
    names = [level.name for level in menu]
    if saved != names:
        count = len(saved) if isinstance(saved, list) else 0
        raise UserError(f"the policy in {directory} chooses among {count} levels, this model's menu has {len(names)} "
                        f"(or other ones); a policy acts only on the menu it was trained on")
    return PPO.load(directory)
