"""The `ppocompress` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

# Only light modules here, for the options' defaults: each command imports what it runs when it
# runs, so that `ppocompress --help` (and a mistyped option) answers without loading torch and transformers.
from ppocompress.compress.data.text import CALIBRATION_PASSAGES, EVALUATION_PASSAGES
from ppocompress.compress.measure.timing import DEFAULT_THREADS, TimingSetup
from ppocompress.errors import Interrupted, UserError, first_line, stops_unwrapped
from ppocompress.fileio import cache_dir
from ppocompress.rl.config import EVALUATION_EPISODES, PPOConfig
from ppocompress.rl.presets import config_for
from ppocompress.stopping import stopped_by_signals

RUNS_DIR = Path("runs")  # where a command writes its outputs unless --out says otherwise

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Find how to compress a transformer layer by layer with PPO, and train PPO on Gymnasium envs.",
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"ppocompress {importlib.metadata.version('ppocompress')}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an unexpected error "
                                                         "(by default it goes to a log file).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Find how to compress a transformer layer by layer with PPO, and train PPO on Gymnasium envs."""


@app.command()
def rl(
    env_id: Annotated[str, typer.Argument(help="Gymnasium environment id, e.g. CartPole-v1.")],
    steps: Annotated[int, typer.Option(help="Environment steps to train for (rounded up to whole rollouts).")] = 100_000,
    seed: Annotated[int, typer.Option(help="Seed for networks, sampling and environments; same seed, same curve.")] = 0,
    out: Annotated[
        Optional[Path],
        typer.Option(help="Output directory for metrics.csv, model.safetensors, config.json, curve.png. "
                     f"Default: {RUNS_DIR}/<ENV_ID>-seed<SEED>."),
    ] = None,
    config: Annotated[
        Optional[Path],
        typer.Option(help="JSON file of PPOConfig fields (n_envs, n_steps, learning_rate, ...). "
                     "Default: the built-in preset for ENV_ID if there is one, else PPOConfig defaults."),
    ] = None,
    eval_episodes: Annotated[int, typer.Option(help="Episodes of deterministic evaluation after "
                                                    "training.")] = EVALUATION_EPISODES,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    sweep: Annotated[Optional[str], typer.Option(help="Search hyper-parameters instead of one run: grid or random, "
                                                      "each trial a whole run on Ray Tune; writes sweep.csv and best_config.json "
                                                      f"(default out: {RUNS_DIR}/<ENV_ID>-sweep-seed<SEED>).")] = None,
    trials: Annotated[Optional[int], typer.Option(help="Trials of a random sweep (a grid's are its combinations).")] = None,
    space: Annotated[Optional[Path], typer.Option(help="JSON file of PPOConfig fields to sweep, each a list of values or "
                                                       "{low, high, log}; replaces those fields of the default space.")] = None,
    ray: Annotated[Optional[str], typer.Option("--ray", help="Ray cluster for a sweep: auto or host:port "
                                                             "(default: a local one for the run).")] = None,
) -> None:
    """Train PPO on a Gymnasium environment, evaluate it, and save the agent and its learning curve;
    or, with --sweep, search its hyper-parameters."""
    from ppocompress.rl.job import sweep_and_export, train_and_export

    ppo_config = PPOConfig.from_json_file(config) if config is not None else config_for(env_id)
    name = env_id.replace("/", "_")
    if sweep is None:
        if trials is not None or space is not None or ray is not None:
            raise UserError("--trials, --space and --ray belong to a sweep; add --sweep grid or --sweep random")
        out_dir = out if out is not None else RUNS_DIR / f"{name}-seed{seed}"
        summary = train_and_export(env_id, steps, seed, out_dir, ppo_config, eval_episodes, progress_bar=progress)
        typer.echo(summary.line())
        return
    out_dir = out if out is not None else RUNS_DIR / f"{name}-sweep-seed{seed}"
    result = sweep_and_export(env_id, sweep, trials, space, steps, seed, out_dir, ppo_config, eval_episodes, ray,
                              progress_bar=progress)
    typer.echo(result.table())
    typer.echo(f"wrote {out_dir / 'sweep.csv'} and {out_dir / 'best_config.json'} (use it with --config)")


ModelOption = Annotated[
    Optional[str],
    typer.Option("--model", help="Hugging Face id or local directory (safetensors only), or an embedded model: "
                                 "mpnet (all-mpnet-base-v2), smollm2 (SmolLM2-135M). Default: the embedded "
                                 "all-MiniLM-L6-v2."),
]
TrustOption = Annotated[bool, typer.Option(help="Allow the model's own Python code to run (off unless you pass this).")]
TextOption = Annotated[
    Optional[Path],
    typer.Option("--text", help="Text file, one passage per line, split into calibration/evaluation. "
                                "Default: gensim's English test text."),
]


RECOVER_HELP = ("Recovery after pruning: none, lsq (least squares), distill, or lsq+distill (least squares, then "
                "distillation on all the calibration text).")
RecoverMinutesOption = Annotated[Optional[float], typer.Option(help="Time budget of a distillation, in minutes, for each "
                                                                     "model distilled. Default 20 (3 for a quality floor's "
                                                                     "second try).")]

RuntimeOption = Annotated[str, typer.Option(help="Where the model runs: auto (time the candidates, serve on the fastest), "
                                               "openvino, onnxruntime or torch.")]


@app.command()
def evaluate(
    model: ModelOption = None,
    plan: Annotated[Optional[Path], typer.Option(help="A plan JSON (or a result.json holding one) to apply first.")] = None,
    text: TextOption = None,
    recovery: Annotated[str, typer.Option("--recover", help=RECOVER_HELP)] = "none",
    recover_minutes: RecoverMinutesOption = None,
    runtime: Annotated[str, typer.Option(help="Runtime the model is judged and timed on: torch, onnxruntime, openvino, "
                                              "or auto (each available one).")] = "torch",
    latency: Annotated[bool, typer.Option(help="Measure latency (each model in its own process).")] = True,
    threads: Annotated[int, typer.Option(help="Threads for latency measurement.")] = DEFAULT_THREADS,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    trust_remote_code: TrustOption = False,
    dense_model: Annotated[Optional[str], typer.Option("--dense", help="For a delivered --model folder: the dense model it "
                                                       "was compressed from. Default: the one its compression.json "
                                                       "names.")] = None,
) -> None:
    """Quality (embedding fidelity, Lee correlation; perplexity and KL for causal LMs) and cost (parameters, size, FLOPs,
    latency) of a model, a plan, or a delivered model folder."""
    from ppocompress.compress.commands.evaluate import evaluate_command

    reports = evaluate_command(model=model, plan=plan, text=text, recovery=recovery, recover_minutes=recover_minutes,
                               runtime=runtime, latency=latency, threads=threads, trust_remote_code=trust_remote_code,
                               dense_model=dense_model, log=_stderr_line)
    if json_out:
        typer.echo(json.dumps(reports[0].to_dict() if len(reports) == 1 else [r.to_dict() for r in reports], indent=1))
        return
    from ppocompress.reporting import print_evaluation

    for report in reports:
        print_evaluation(report.to_dict())


@app.command()
def bench(
    model: ModelOption = None,
    text: TextOption = None,
    runtime: Annotated[str, typer.Option(help="Runtime every variant is exported to, judged and timed on, or auto "
                                              "(every available one).")] = "auto",
    json_file: Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON to this file.")] = None,
    threads: Annotated[int, typer.Option(help="Threads for latency measurement (the same for every "
                                              "variant).")] = DEFAULT_THREADS,
    batch_size: Annotated[int, typer.Option(help="Batch size for latency (encoders; a causal LM is timed "
                                                 "decoding).")] = TimingSetup.batch_size,
    seq_len: Annotated[int, typer.Option(help="Sequence length for latency (encoders).")] = TimingSetup.seq_len,
    rounds: Annotated[int, typer.Option(help="Interleaved latency rounds per variant.")] = TimingSetup.rounds,
    calibration_texts: Annotated[Optional[int], typer.Option(help="Calibration passages (importance, recovery), balanced "
                                                                  "between the sources. "
                                                                  f"Default {CALIBRATION_PASSAGES}.")] = None,
    evaluation_texts: Annotated[Optional[int], typer.Option(help="Held-out passages for quality, balanced between the "
                                                                 f"sources. Default {EVALUATION_PASSAGES}.")] = None,
    trust_remote_code: TrustOption = False,
) -> None:
    """Measure uniform variants (int8, heads/FFN removed, layers dropped, combinations) on each runtime against dense
    PyTorch fp32."""
    from ppocompress.compress.commands.bench import bench_command
    from ppocompress.reporting import print_bench

    run = bench_command(model=model, text=text, runtime=runtime, threads=threads, batch_size=batch_size, seq_len=seq_len,
                        rounds=rounds, calibration_texts=calibration_texts, evaluation_texts=evaluation_texts,
                        trust_remote_code=trust_remote_code, json_file=json_file, log=_stderr_line, progress=_progress_log())
    print_bench(run.variants, run.model, run.causal)


@app.command("compress")
def compress_command(
    model: ModelOption = None,
    target_speedup: Annotated[Optional[float], typer.Option(help="Speedup against dense PyTorch fp32 the plan must reach "
                                                                 "(by the latency table).")] = None,
    target_int8_speedup: Annotated[Optional[float], typer.Option(help="Or: speedup against the dense int8 model on the "
                                                                      "serving runtime. A causal LM's default: 1.2.")] = None,
    target_size: Annotated[Optional[float], typer.Option(help="Or: the most weight bytes the plan may take, as a fraction "
                                                              "of dense PyTorch fp32's (as the runtime stores them).")] = None,
    targets: Annotated[Optional[str], typer.Option(help="Or: a family of speedups, e.g. 2,3,4,5,6: one PPO search for all, "
                                                        "a model each in OUT/target-<N>x/.")] = None,
    target_int8_speedups: Annotated[Optional[str], typer.Option(help="Or: a family of speedups against the dense int8 "
                                                                     "model, e.g. 1.1,1.2,1.4.")] = None,
    target_sizes: Annotated[Optional[str], typer.Option(help="Or: a family of size fractions, e.g. 0.3,0.5.")] = None,
    min_quality: Annotated[Optional[float], typer.Option(help="Deliver the most compressed target whose plan keeps this "
                                                              "quality on validation text (an encoder's cosine, a causal "
                                                              "LM's exp(-KL)), distilled if least squares falls short, or "
                                                              "dense int8 if none does. Alone, it searches several "
                                                              "speedups over dense int8. An encoder's default run has one "
                                                              "(README).")] = None,
    searcher: Annotated[str, typer.Option(help="ppo, uniform, random, evolutionary or estimate.")] = "ppo",
    evals: Annotated[Optional[int], typer.Option(help="Plan evaluations each searcher may make (for a family, in all). "
                                                      "Default 200 for an encoder, 100 for a causal LM (each costs more); "
                                                      "twice that for a family delivered whole (a quality floor's: "
                                                      "once).")] = None,
    policy: Annotated[Optional[Path], typer.Option(help="Start PPO from the policy a run saved (its OUT/policy): its plans "
                                                        "for the targets are scored first.")] = None,
    recovery: Annotated[str, typer.Option("--recover", help=RECOVER_HELP)] = "lsq",
    recover_minutes: RecoverMinutesOption = None,
    out: Annotated[Path, typer.Option(help="Output directory.")] = RUNS_DIR / "compress",
    seed: Annotated[int, typer.Option(help="Seed of the searchers.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out.")] = False,
    baselines: Annotated[bool, typer.Option(help="Also run the other searchers on the same budget.")] = True,
    cost: Annotated[str, typer.Option(help="Cost table: measured (latency, cached) or flops.")] = "measured",
    runtime: RuntimeOption = "auto",
    text: TextOption = None,
    threads: Annotated[int, typer.Option(help="Threads for latency measurement.")] = DEFAULT_THREADS,
    trust_remote_code: TrustOption = False,
    ray: Annotated[Optional[str], typer.Option("--ray", help="Score plans in parallel on Ray: local (a cluster of this "
                                                             "machine's CPUs), auto or host:port (a running cluster). "
                                                             "Same seed, same plans as without it.")] = None,
) -> None:
    """Search a per-layer compression plan with PPO, then deliver the compressed model, measured."""
    from ppocompress.search.job import STATE_FILE, run_compress

    settings = _compress_settings(model=model, target_speedup=target_speedup, target_int8_speedup=target_int8_speedup,
                                  target_size=target_size, targets=targets,
                                  target_int8_speedups=target_int8_speedups, target_sizes=target_sizes,
                                  min_quality=min_quality, policy=policy,
                                  searcher=searcher, evals=evals, recovery=recovery,
                                  recover_minutes=recover_minutes, seed=seed, baselines=baselines, threads=threads, text=text,
                                  cost=cost, runtime=runtime, trust_remote_code=trust_remote_code)
    try:
        with stops_unwrapped():
            results = run_compress(settings, out, resume=resume, log=_progress_log(), ray=ray)
    except Interrupted as stop:
        if (out / STATE_FILE).exists():
            stop.resume = " ".join(["ppocompress", *sys.argv[1:], *([] if resume else ["--resume"])])
        raise
    _print_compressed(results, settings.delivers_set, out)


def _compress_settings(*, model: str | None, target_speedup: float | None, target_int8_speedup: float | None,
                       target_size: float | None, targets: str | None,
                       target_int8_speedups: str | None, target_sizes: str | None, min_quality: float | None,
                       policy: Path | None, searcher: str,
                       evals: int | None, recovery: str,
                       recover_minutes: float | None, seed: int, baselines: bool, threads: int, text: Path | None, cost: str,
                       runtime: str, trust_remote_code: bool):
    """compress' options as the search's CompressSettings (no target given: the model's default)."""
    from ppocompress.search.settings import CompressSettings

    settings = CompressSettings(model=model, target_speedup=target_speedup, target_int8_speedup=target_int8_speedup,
                                target_size=target_size, target_set_speedups=_numbers(targets, "--targets"),
                                target_set_int8_speedups=_numbers(target_int8_speedups, "--target-int8-speedups"),
                                target_set_sizes=_numbers(target_sizes, "--target-sizes"), min_quality=min_quality,
                                policy=None if policy is None else str(policy), searcher=searcher,
                                evals=evals, recovery=recovery, recover_minutes=recover_minutes, seed=seed,
                                baselines=baselines, threads=threads,
                                text=None if text is None else str(text), cost=cost, runtime=runtime,
                                trust_remote_code=trust_remote_code)
    return settings


def _print_compressed(results: list, target_set: bool, out: Path) -> None:
    """The run's summary (a target set's, or the searchers side by side), then a `done` line for each model delivered."""
    from ppocompress.reporting import print_compress, print_target_set
    from ppocompress.search.results import TargetSetResult

    if target_set:
        print_target_set(TargetSetResult.from_dir(out))
    else:
        print_compress(results[0])
    for result in results:
        delivered = result.delivered
        quality = (f"kl_heldout={delivered.kl_heldout:.4f} perplexity_heldout={delivered.perplexity_heldout:.2f}" if result.causal
                   else f"cosine_heldout={delivered.cosine_heldout:.4f}")
        typer.echo(f"done searcher={result.searcher} delivered={delivered.name.replace(' ', '_')} "
                   f"runtime={result.runtime} speedup={delivered.speedup:.2f} "
                   f"vs_dense_int8={delivered.speedup_vs_dense_int8:.2f} {quality} target={result.target_value:g} out={out}")


def _numbers(text: str | None, option: str) -> list[float] | None:
    """"2,3,4.5" -> [2.0, 3.0, 4.5]."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{option} takes numbers separated by commas, e.g. 2,3,4; got {text!r}") from None


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="The --out directory of ppocompress compress.")]) -> None:
    """Rebuild report.html and its plots from a run's saved results."""
    from ppocompress.search.report import write_report

    typer.echo(str(write_report(run_dir)))


def _stderr_line(line: str) -> None:
    typer.echo(line, err=True)


def _progress_log():
    """Log lines on stderr, each with the time since the command started."""
    start = time.monotonic()

    def log(line: str) -> None:
        minutes, seconds = divmod(int(time.monotonic() - start), 60)
        typer.echo(f"[{minutes:2d}:{seconds:02d}] {line}", err=True)

    return log


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and exit code 2; any other
    error one line and exit code 1, its traceback in a log file (on the terminal with
    --debug)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        with stopped_by_signals():
            app(args=args, standalone_mode=False)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except typer.TyperException as exc:  # argument parsing: wrong type, unknown option, ...
        if exc.format_message():  # empty when the help text was shown for a bare command
            typer.echo(f"error: {exc.format_message()} (see --help)", err=True)
        return 2 if exc.exit_code == 1 else exc.exit_code
    except Interrupted as stop:
        hint = f"; continue it with: {stop.resume}" if stop.resume else ""
        typer.echo(f"error: interrupted by {signal.Signals(stop.signal_number).name}{hint}", err=True)
        return 128 + stop.signal_number
    except Exception as exc:  # a bug or a broken environment, not the user's input
        if "--debug" in args:
            raise
        typer.echo(f"error: unexpected {type(exc).__name__}: {first_line(exc)}; the traceback is in {_log_traceback()} "
                   "(ppocompress --debug shows it here); please report it", err=True)
        return 1
    return 0


def _log_traceback() -> Path:
    """Writes the exception being handled to a new log file and returns its path."""
    folder = cache_dir() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.write_text(f"ppocompress {' '.join(sys.argv[1:])}\n{traceback.format_exc()}")
    return path


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
