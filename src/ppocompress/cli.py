"""The `ppocompress` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ppocompress.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Find how to compress a transformer layer by layer with PPO, and train PPO on Gymnasium envs.",
)


@app.callback()
def _root() -> None:
    """Find how to compress a transformer layer by layer with PPO, and train PPO on Gymnasium envs."""


@app.command()
def rl(
    env_id: Annotated[str, typer.Argument(help="Gymnasium environment id, e.g. CartPole-v1.")],
    steps: Annotated[int, typer.Option(help="Environment steps to train for (rounded up to whole rollouts).")] = 100_000,
    seed: Annotated[int, typer.Option(help="Seed for networks, sampling and environments; same seed, same curve.")] = 0,
    out: Annotated[
        Optional[Path],
        typer.Option(help="Output directory for metrics.csv, model.safetensors, config.json, curve.png. "
                     "Default: runs/<ENV_ID>-seed<SEED>."),
    ] = None,
    config: Annotated[
        Optional[Path],
        typer.Option(help="JSON file of PPOConfig fields (n_envs, n_steps, learning_rate, ...). "
                     "Default: the built-in preset for ENV_ID if there is one, else PPOConfig defaults."),
    ] = None,
    eval_episodes: Annotated[int, typer.Option(help="Episodes of deterministic evaluation after training.")] = 20,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train PPO on a Gymnasium environment, evaluate it, and save the agent and its learning curve."""
    from ppocompress.rl.config import PPOConfig
    from ppocompress.rl.job import train_and_export
    from ppocompress.rl.presets import config_for

    ppo_config = PPOConfig.from_json_file(config) if config is not None else config_for(env_id)
    out_dir = out if out is not None else Path("runs") / f"{env_id.replace('/', '_')}-seed{seed}"
    summary = train_and_export(env_id, steps, seed, out_dir, ppo_config, eval_episodes, progress_bar=progress)
    typer.echo(summary.line())


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        app(args=argv, standalone_mode=False)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except typer.TyperException as exc:  # argument parsing: wrong type, unknown option, ...
        if exc.format_message():  # empty when the help text was shown for a bare command
            typer.echo(f"error: {exc.format_message()} (see --help)", err=True)
        return 2 if exc.exit_code == 1 else exc.exit_code
    except typer.Abort:
        typer.echo("error: interrupted", err=True)
        return 130
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
