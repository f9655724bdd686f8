"""``cotune demo``: LaVIN-style adaptation with CoMMIT balancing on real small models, offline, on CPU."""

from cotune.demo.pipeline import TARGETS, DemoPlan, DemoResult, demo_config, run_demo

__all__ = ["TARGETS", "DemoPlan", "DemoResult", "demo_config", "run_demo"]
