"""Assigning the trainer's parameter groups to balance sides (feature side(s) first, LLM side last)."""

from __future__ import annotations

import fnmatch

from cotune.config import BalanceConfig, ConfigError


def resolve_sides(config: BalanceConfig, groups: list[str]) -> dict[str, list[str]]:
    """Side name -> its parameter groups. Every group is in exactly one side; sides without a
    trainable group are dropped (kappa then needs at least two sides left)."""
    if config.sides:
        sides: dict[str, list[str]] = {}
        owner: dict[str, str] = {}
        for side, patterns in config.sides.items():
            for pattern in patterns:
                matched = [g for g in groups if fnmatch.fnmatchcase(g, pattern)]
                for group in matched:
                    if group in owner and owner[group] != side:
                        raise ConfigError(f"balance.sides: group {group!r} is in side {owner[group]!r} and {side!r}")
                    owner[group] = side
                sides.setdefault(side, []).extend(g for g in matched if g not in sides.get(side, []))
        orphans = [g for g in groups if g not in owner]
        if orphans:
            raise ConfigError(f"balance.sides: groups {orphans} are in no side; groups: {', '.join(groups)}")
    elif config.per_encoder:
        names = [g.split(".", 1)[1] for g in groups if g.startswith(("encoder.", "connector."))]
        sides = {}
        for name in dict.fromkeys(names):
            sides[f"S.{name}"] = [g for g in (f"encoder.{name}", f"connector.{name}") if g in groups]
        if "modality_embedding" in groups and sides:
            next(iter(sides.values())).append("modality_embedding")
        sides["T"] = [g for g in groups if g == "llm"]
    else:
        sides = {"S": [g for g in groups if g != "llm"], "T": [g for g in groups if g == "llm"]}
    return {side: members for side, members in sides.items() if members}
