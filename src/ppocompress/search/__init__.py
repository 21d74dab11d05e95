"""The search: joins the PPO library (ppocompress.rl) and the compression engine
(ppocompress.compress). CompressionEnv is a plain Gymnasium env usable by any agent."""

from ppocompress.search.cost_table import CostTable
from ppocompress.search.env import CompressionEnv, Target
from ppocompress.search.levels import Level, default_menu
from ppocompress.search.plan import Plan

__all__ = ["CompressionEnv", "CostTable", "Level", "Plan", "Target", "default_menu"]
