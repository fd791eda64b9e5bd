"""``python -m qnllm worker --engine mypkg.mod:MyEngine --connect 127.0.0.1:9999``: serve a
Python engine to a hub as a worker process. ``--model FILE`` (or ``seed:N``) makes the engine
with ``model=FILE``: ``--engine qnllm.engines:ReferenceEngine --model teacher.safetensors``
serves a trained model file."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, List, Optional

from . import QnllmError, serve_worker


def load_engine(spec: str, model: Optional[str] = None) -> Any:
    """``module:Name``: an instance, a class (made with no arguments, or with ``model=``
    when ``model`` is given) or a factory."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"--engine must be module:Name, got {spec!r}")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise SystemExit(f"cannot import {module_name!r}: {e}") from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise SystemExit(f"{module_name!r} has no {attr!r}") from None
    if callable(target) and not hasattr(target, "reason") or isinstance(target, type):
        target = target() if model is None else target(model=model)
    elif model is not None:
        raise SystemExit(f"--model needs --engine to name a class or factory; {spec!r} is an instance")
    return target


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qnllm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="serve a Python engine to a hub")
    worker.add_argument("--engine", required=True, help="module:Class of the engine")
    worker.add_argument("--connect", default="127.0.0.1:9999", help="hub address (host:port or unix:PATH)")
    worker.add_argument("--name", default=None, help="engine name shown by the hub")
    worker.add_argument("--token", default=None, help="auth token, if the hub needs one")
    worker.add_argument("--max-in-flight", type=int, default=64, help="requests handled at once")
    worker.add_argument("--max-retries", type=int, default=None, help="give up after this many failed connects")
    worker.add_argument("--teacher", action="store_true", help="register as a teacher of the hub's coordinator")
    worker.add_argument("--model", default=None,
                        help="make the engine with model=MODEL (a safetensors file or seed:N)")
    args = parser.parse_args(argv)
    if args.command == "worker":
        if "" not in sys.path:
            sys.path.insert(0, "")
        try:
            engine = load_engine(args.engine, args.model)
            serve_worker(
                engine,
                args.connect,
                name=args.name,
                token=args.token,
                max_in_flight=args.max_in_flight,
                max_retries=args.max_retries,
                teacher=args.teacher,
            )
        except QnllmError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
