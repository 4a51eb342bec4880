"""The ``optenv`` command line: ``optenv list | bench | eval | demo | speed | train``."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "json_object", "main"]


def _cmd_list(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from rich.console import Console
    from rich.table import Table

    import optenv

    table = Table(title="optenv environments")
    for column in ("id", "horizon", "description"):
        table.add_column(column)
    for env_id in optenv.registered_ids():
        info = optenv.env_info(env_id)
        table.add_row(env_id, str(info.horizon), info.description)
    console = Console(width=args.width)
    console.print(table)
    agents = Table(title="optenv agents")
    for column in ("name", "kind"):
        agents.add_column(column)
    for name in optenv.registry.agent_names():
        agents.add_row(name, "registered: tuned or trained on an env")
    for name in optenv.registry.pretrained_names():
        agents.add_row(name, "pretrained: shipped, ready to bench")
    console.print(agents)
    return 0


def json_object(text: str) -> dict[str, Any]:
    """An argparse type: ``text`` parsed as a JSON object (``--env-kwargs``), else a
    message naming it (argparse reports it with the option's name, exit code 2)."""
    example = "expected a JSON object such as '{\"activation\": \"tanh\"}'"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(
            f"not valid JSON ({err.msg} at position {err.pos}): {text!r}; {example}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{example}, got {text!r}")
    return value


def _run(config: Any, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """run_bench, with configuration errors reported argparse-style (exit code 2)."""
    from optenv.bench import BenchConfigError, run_bench

    try:
        return run_bench(config)
    except BenchConfigError as err:
        parser.error(str(err))
        raise  # parser.error exits; this line is for type checkers


def _cmd_bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from optenv.bench import BenchConfig

    config = BenchConfig(
        envs=args.envs, agents=args.agents, seeds=args.seeds, steps=args.steps,
        env_kwargs=args.env_kwargs, out=Path(args.out),
        metric=args.metric, grid=args.grid, progress=not args.quiet,
    )
    _run(config, parser)
    return 0


def _cmd_eval(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from rich.console import Console

    from optenv.bench import BenchConfig

    config = BenchConfig(
        envs=[args.env], agents=[args.agent], seeds=args.seeds, steps=args.steps,
        env_kwargs=args.env_kwargs, out=Path(args.out),
        metric=args.metric, tune=not args.no_tune, progress=not args.quiet,
    )
    results = _run(config, parser)
    env = results["envs"][args.env]
    ((label, r),) = env["agents"].items()
    console = Console()
    console.print(f"{label} on {args.env}, {env['steps']} steps: final loss per seed")
    for seed, loss, div in zip(env["eval_seeds"], r["final_loss"], r["diverged"], strict=True):
        value = "-" if loss is None else f"{loss:.6g}"
        console.print(f"  seed {seed}: {value}" + ("  (diverged)" if div else ""))
    return 0


def _cmd_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from optenv.demo import run_demo

    run_demo(out=Path(args.out), steps=args.steps, seeds=args.seeds)
    return 0


def _cmd_speed(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from optenv.speed import run_speed

    result = run_speed(steps=args.steps, num_envs=args.num_envs, threads=args.threads,
                       repeats=args.repeats)
    if args.json:
        from optenv.runio import atomic_write_json

        atomic_write_json(Path(args.json), result)
    return 0


def set_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``; VALUE is read as JSON where it parses (numbers, lists, true), else text."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a Python identifier KEY, "
                                         f"got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _constructor_params(agent: str) -> list[Any]:
    """The parameters of an agent class's constructor."""
    import inspect

    from optenv.registry import _agent_class

    return list(inspect.signature(_agent_class(agent)).parameters.values())


def _seed_kwarg(agent: str, seed: int) -> dict[str, int]:
    """``{"seed": seed}`` for agents whose constructor takes a seed (tuned baselines do not)."""
    params = _constructor_params(agent)
    takes = any(p.name == "seed" or p.kind is p.VAR_KEYWORD for p in params)
    return {"seed": seed} if takes else {}


def _constructor_options(agent: str) -> set[str]:
    """Options an agent's constructor names explicitly (not seed, not ``**defaults``)."""
    return {p.name for p in _constructor_params(agent) if p.name != "seed"
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _cmd_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from optenv.bench import BenchConfigError, check_env_id
    from optenv.registry import make_agent

    try:
        check_env_id(args.env)
    except BenchConfigError as err:
        parser.error(str(err))
    # --set options the agent's constructor names (L2L's preprocess, RNNprop's augment)
    # build the agent; all others are training options
    sets = dict(args.set)
    named = _constructor_options(args.agent)
    try:
        agent = make_agent(args.agent, **_seed_kwarg(args.agent, args.seed),
                           **{k: v for k, v in sets.items() if k in named})
    except (TypeError, ValueError) as err:
        parser.error(f"cannot build agent {args.agent!r}: {err}")
    # only what the user gave reaches train(): each agent keeps its own defaults
    given = {"iterations": args.iterations, "samples": args.samples, "horizon": args.horizon,
             "hidden": args.hidden, "total_timesteps": args.timesteps}
    train_kwargs: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    train_kwargs.update({k: v for k, v in sets.items() if k not in named})
    if args.env_kwargs:
        train_kwargs["env_kwargs"] = args.env_kwargs
    out = Path(args.out)
    try:
        summary = agent.train(args.env, out=out, resume=args.resume,
                              progress=not args.quiet, **train_kwargs)
    except (TypeError, ValueError) as err:  # an option it does not take, or a bad value
        parser.error(f"agent {args.agent!r}: {err}")
    path = agent.save(out / "agent.pt")
    if not args.quiet:
        final = summary.get("final", {}) if isinstance(summary, dict) else {}
        shown = ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in final.items() if isinstance(v, int | float | str))
        print(f"trained {args.agent} on {args.env}" + (f": {shown}" if shown else "")
              + f"; saved {path}")
    return 0


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (the error names the text)."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0 (the error names the text)."""
    return _int_at_least(text, 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0 (the error names the text)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _bench_options(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--seeds", type=positive_int, default=5,
                   help="held-out evaluation seeds 1000..1000+K-1 (default 5)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="steps per run (default: the env's horizon)")
    p.add_argument("--env-kwargs", type=json_object, default="{}", metavar="JSON",
                   help="task arguments as in gym.make, e.g. '{\"activation\": \"tanh\"}'")
    p.add_argument("--out", default=out, help=f"run folder (default {out})")
    p.add_argument("--metric", choices=("final", "auc"), default="final",
                   help="what tuning minimizes: final loss or mean loss over steps")
    p.add_argument("--quiet", action="store_true", help="no progress bars or tables")


def _threads(text: str) -> int:
    return _int_at_least(text, 0, "a thread count >= 0")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optenv", description=__doc__)
    # The optimizees are small: a second intra-op thread gains little and, when another
    # process holds a core, makes every op wait for it (optenv demo: 46 s with 1 thread,
    # 380 s with 2 beside one busy process). `optenv speed` has its own --threads.
    parser.add_argument("--threads", type=_threads, default=1,
                        help="torch intra-op threads for bench/eval/demo/train (default 1; "
                        "0: torch's default)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list the registered optimizee environments")
    p.add_argument("--width", type=int, default=None, help="console width")
    p.set_defaults(func=_cmd_list, subparser=p)

    p = sub.add_parser(
        "bench", help="tune baselines / load learned agents, evaluate on held-out seeds",
        description="Tune each agent on seeds 0-2 (cached in OUT/tuning.json), evaluate it "
        "on held-out seeds, write results.json, report.md and a plot per env.",
    )
    p.add_argument("--envs", nargs="+", required=True, metavar="ID",
                   help="env ids, or 'all' (every registered id that needs no dataset root)")
    p.add_argument("--agents", nargs="+", required=True, metavar="NAME",
                   help="registered agents, 'baselines' (all nine), or NAME:PATH of a saved "
                   "agent")
    p.add_argument("--grid", nargs="+", type=float, default=None, metavar="LR",
                   help="learning-rate grid for tuning (default: each agent's own)")
    _bench_options(p, "runs/bench")
    p.set_defaults(func=_cmd_bench, subparser=p)

    p = sub.add_parser("eval", help="evaluate one agent (a saved file or a baseline) on an env")
    p.add_argument("--agent", required=True, metavar="NAME_OR_PATH",
                   help="a saved agent file, NAME:PATH, or a registered agent (tuned first)")
    p.add_argument("--env", required=True, metavar="ID")
    p.add_argument("--no-tune", action="store_true",
                   help="use a registered agent's default hyperparameters")
    _bench_options(p, "runs/eval")
    p.set_defaults(func=_cmd_eval, subparser=p)

    p = sub.add_parser("demo", help="a short bench of tuned baselines on optenv/MLP-Digits-v0")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="steps per run (default: the horizon, 400)")
    p.add_argument("--seeds", type=positive_int, default=5, help="evaluation seeds (default 5)")
    p.set_defaults(func=_cmd_demo, subparser=p)

    p = sub.add_parser("speed", help="measure env overhead against bare torch loops")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--num-envs", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5,
                   help="interleaved rounds; ratios are medians over rounds (default 5)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's default)")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    p.set_defaults(func=_cmd_speed, subparser=p)

    p = sub.add_parser("train", help="train a learned optimizer (e.g. gps) on an env",
                       description="Train an agent from the registry; the run folder gets "
                       "metrics.jsonl, checkpoint.pt, config.json and agent.pt.")
    p.add_argument("agent", metavar="AGENT", help="registered agent name, e.g. gps")
    p.add_argument("--env", required=True, metavar="ID")
    p.add_argument("--iterations", type=positive_int, default=None,
                   help="outer iterations (gps, l2l, rnnprop, metz; default: the agent's)")
    p.add_argument("--samples", type=positive_int, default=None,
                   help="rollouts per iteration (gps)")
    p.add_argument("--horizon", type=positive_int, default=None,
                   help="steps per rollout (default: the env's horizon)")
    p.add_argument("--hidden", type=positive_int, default=None, help="hidden units of the policy")
    p.add_argument("--timesteps", type=positive_int, default=None,
                   help="environment steps (ppo, sac)")
    p.add_argument("--set", type=set_value, action="append", default=[], metavar="KEY=VALUE",
                   help="any other option of the agent: a training option, or one its "
                        "constructor names (L2L's preprocess, scale, gac; RNNprop's "
                        "augment); repeatable; VALUE is JSON where it parses, else text")
    p.add_argument("--env-kwargs", type=json_object, default="{}", metavar="JSON",
                   help="env/task arguments as in gym.make")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_train, subparser=p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads and args.command != "speed":
        import torch

        torch.set_num_threads(args.threads)
    return int(args.func(args, args.subparser))


if __name__ == "__main__":
    sys.exit(main())
