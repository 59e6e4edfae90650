"""What every trial of a search shares, as one frozen, typed object that Ray hands to each trial."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.config import SearchConfig
from vae.config import TrainConfig
from vae.records import rung_epochs


@dataclass(frozen=True)
class TrialSettings:
    """Fixed for the whole search; a trial adds only what Optuna sampled (`config`)."""

    train: TrainConfig  # the search's training values; the sampled fields are replaced per trial
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    data_dir: Path | None  # the config's data.data_dir; None: each node's own default (data.default_data_dir)
    samples_every: int  # sample grids every this many epochs (and at every rung, and at the end)
    system_metrics_s: float  # MLflow system metrics every this many seconds; 0: off
    rung_epochs: tuple[int, ...]  # where ASHA may stop a trial early: its last epoch there needs its grids
    cpus: float
    gpus: float
    mnist: Any = None  # a Ray object ref to the driver's verified files (`data.packed`), for nodes without them

    def config(self, sampled: dict[str, Any]) -> TrainConfig:
        """The trial's TrainConfig: what Optuna sampled over the search's training values."""
        return dataclasses.replace(self.train, **sampled)

    @classmethod
    def of(
        cls, cfg: SearchConfig, tracking_uri: str, experiment_id: str, parent: str, mnist: Any = None
    ) -> TrialSettings:
        asha = cfg.asha
        return cls(
            train=TrainConfig(
                **cfg.train.model_dump(),
                epochs=cfg.budget.max_epochs,
                subset=cfg.data.subset,
                val_subset=cfg.data.val_subset,
            ),
            tracking_uri=tracking_uri,
            experiment_id=experiment_id,
            parent_run_id=parent,
            data_dir=Path(cfg.data.data_dir).expanduser().resolve() if cfg.data.data_dir else None,
            samples_every=cfg.tracking.samples_every,
            system_metrics_s=cfg.tracking.system_metrics_s,
            rung_epochs=rung_epochs(cfg.budget.max_epochs, asha.grace_period, asha.reduction_factor)
            if cfg.scheduler in ("asha", "promotion")
            else (),
            cpus=cfg.resources.cpus,
            gpus=cfg.resources.gpus,
            mnist=mnist,
        )
