"""What one server serves: the loaded model, its data spec, the limits and the model worker.

:func:`load_service` loads a run directory (its final model or latest checkpoint), a saved model
directory or a merged directory once; with ``merged=True`` an unmerged model's LoRA and linear
adapters are folded into its weights in memory first (:func:`cotune.merge.model.merge_model`,
verified against the unmerged logits), which makes decoding faster and the answers equal up to
float rounding. Nothing here has trainable parameters (the model is served in eval mode).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from cotune.data.spec import DataSpec
from cotune.data.turn_end import stop_ids
from cotune.serve.config import ServeConfig
from cotune.serve.engine import Engine

log = logging.getLogger(__name__)


@dataclass
class Service:
    """A loaded model ready to serve.

    name: the model id clients send (the run directory's name unless given).
    trainable_params: parameters the run trained (counted before any merge).
    merged: whether the served weights have the adapters folded in.
    """

    name: str
    model: object
    spec: DataSpec
    config: ServeConfig
    trainable_params: int
    merged: bool
    engine: Engine = field(init=False)
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        stops = stop_ids(self.spec.tokenizer, self.spec.template)  # answers end where training ended them
        self.engine = Engine(self.model, self.spec.tokenizer, self.config.max_queue, self.config.max_batch, stops)

    @property
    def modalities(self) -> list[str]:
        """``text`` and the media kinds the model reads."""
        return ["text", *dict.fromkeys(e.kind for e in self.spec.encoders)]

    def describe(self) -> dict:
        """The model entry of ``GET /v1/models`` (OpenAI's fields plus cotune's)."""
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "cotune",
                "trainable_params": self.trainable_params, "modalities": self.modalities, "merged": self.merged,
                "template": self.spec.template}


def load_service(run_dir: str | Path, config: ServeConfig | None = None, *, merged: bool = False, device=None,
                 name: str | None = None) -> Service:
    """Loads the model of ``run_dir`` for serving (see the module docstring); ConfigError or
    FileNotFoundError naming what is wrong when it cannot be served."""
    import torch

    from cotune.merge.model import merge_model
    from cotune.model.data_spec import data_spec_from_model
    from cotune.rundir import RunDir

    config = config or ServeConfig()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    log.info("loading %s on %s", run_dir, device)
    run = RunDir(run_dir)
    run_config = run.config()  # what is missing is said before any weight loads
    model = run.load(device)[0]
    model.check_generation()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    already = bool(getattr(model, "is_merged", False))
    if merged and not already:
        log.info("merging the adapters into the weights (in memory)")
        model = merge_model(model, None, run_config)
    model.eval()
    spec = data_spec_from_model(model, run_config.data)
    name = name or Path(run_dir).resolve().name
    return Service(name, model, spec, config, trainable, merged or already)
