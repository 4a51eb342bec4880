"""The ``optenv`` command line: ``optenv list | demo | speed``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    import optenv

    table = Table(title="optenv environments")
    for column in ("id", "horizon", "description"):
        table.add_column(column)
    for env_id in optenv.registered_ids():
        info = optenv.env_info(env_id)
        table.add_row(env_id, str(info.horizon), info.description)
    Console(width=args.width).print(table)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from optenv.demo import run_demo

    run_demo(env_id=args.env, out=Path(args.out), seed=args.seed)
    return 0


def _cmd_speed(args: argparse.Namespace) -> int:
    from optenv.speed import run_speed

    result = run_speed(steps=args.steps, num_envs=args.num_envs, threads=args.threads)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optenv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list the registered optimizee environments")
    p.add_argument("--width", type=int, default=None, help="console width")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("demo", help="train an MLP on digits through the env, write a plot")
    p.add_argument("--env", default="optenv/MLP-Digits-v0")
    p.add_argument("--out", default="runs/demo", help="run folder")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("speed", help="measure env overhead against bare torch loops")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--num-envs", type=int, default=32)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's default)")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    p.set_defaults(func=_cmd_speed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
