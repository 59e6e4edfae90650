"""What a trial sends to its MLflow run besides metrics: sample grids, best-weight snapshots, its error.

One queue per trial (`Sender`), so training never waits on a slow server; the
trial's work folder holds each file until it is sent. What never lands is
counted: on the trial's reports, on its run when the server answers, and in
the search's last line.
"""

from __future__ import annotations

import functools
import shutil
import sys
from pathlib import Path
from typing import Any

from search.tracking import Sender, patiently
from search.trial_runs import TrialTracker
from vae.figures import grid_pixels, grids
from vae.records import LOST_WRITES

FINAL_FLUSH_S = 300.0  # at a trial's end (or where ASHA may stop it), what has not landed by then is lost
TAG_LOST_S = 60.0  # how long a trial that lost writes keeps trying to say so on its run


class Uploads:
    """A trial's artifact writes, in order, each retried until it lands or the server's patience runs out."""

    def __init__(self, tracker: TrialTracker, run_id: str, work: Path, name: str, before: int = 0) -> None:
        self.tracker, self.run_id, self.work = tracker, run_id, work
        self.before = before  # lost by earlier attempts of this trial (a retry, a resume), from its run's tag
        self.said = before  # what the trial's last report said
        self.sender = Sender(name)

    @property
    def lost(self) -> int:
        return self.before + len(self.sender.lost)

    def unlanded(self) -> int:
        """For a report: lost, and still under way (a trial may be stopped after any report); kept as said."""
        self.said = self.lost + self.sender.pending
        return self.said

    def grids(self, trainer: Any, epoch: int) -> None:
        """The epoch's sample grids as MLflow images with the epoch as step (the UI's step slider)."""
        for key, images in grids(trainer.model.decoder, trainer.config.latent, seed=trainer.config.seed).items():
            upload = functools.partial(self.tracker.log_image, self.run_id, grid_pixels(images), key, epoch)
            self.sender.submit(f"{key} grid, epoch {epoch}", upload)

    def best(self, weights: Path, epoch: int) -> None:
        """A snapshot of the best weights, uploaded as `checkpoint/best.pt`; a later best does not wait behind it."""
        snapshot = self.work / f"best-{epoch}" / "best.pt"  # a folder each: MLflow names it by its file
        snapshot.parent.mkdir()
        shutil.copy(weights, snapshot)

        def upload() -> None:
            self.tracker.log_artifact(self.run_id, snapshot, "checkpoint")
            shutil.rmtree(snapshot.parent, ignore_errors=True)

        self.sender.submit("best checkpoint", upload)

    def error(self, path: Path) -> None:
        self.sender.submit(path.name, lambda: self.tracker.log_artifact(self.run_id, path))

    def wait(self, seconds: float) -> bool:
        """Wait for what was submitted so far; False if some of it is still under way."""
        return self.sender.flush(seconds)

    def settle(self) -> None:
        """At the trial's last report: wait for the queue, then count what has not landed as lost."""
        if not self.sender.flush(FINAL_FLUSH_S):
            self.sender.abandon()

    def close(self) -> None:
        """Settle, say on the run what was lost (if the server answers), end the thread: the folder may go.

        The run's tag is the trial's final word, which the driver prefers to its last report: writes
        that report counted as under way may have landed since.
        """
        self.settle()
        if self.lost or self.said:
            tags = {LOST_WRITES: str(self.lost), f"{LOST_WRITES}_what": "; ".join(self.sender.lost)[:4000]}
            try:
                patiently(lambda: self.tracker.set_tags(self.run_id, tags), "tagging lost writes", TAG_LOST_S)
            except RuntimeError as e:  # the driver still counts them from this trial's reports
                print(f"vaesearch trial: {self.lost} write(s) lost; {e}", file=sys.stderr)
        self.sender.close()
