"""`vaesearch compare`: best-so-far validation loss against trial-epochs for several searches on one plot.

The seed's own sequence (its 12 distinct hand runs in its tables' order, each to the end: the base model
appears in Tables 1 and 2 with the same figures, one run) can be drawn beside them from a reproduction of
its tables: what the same person would have reached, epoch for epoch, by running the seed's protocol.
Each search is named on the tracking server or given as the trials.csv its report wrote, so a comparison
outlives the server that ran it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from analysis.report import SEED_REPORT
from analysis.review import best_so_far
from analysis.runs import LOGGED_AT, AnalysisError, Search, Trial, combine, source
from vae.loss import PER_BATCH

Curve = list[tuple[int, float]]


def seed_order() -> list[tuple[str, tuple[int, int, int]]]:
    """The seed's runs as its tables list them: Table 1 by H, Table 2 by decoder, Table 3 by Z."""
    rows = [(table, key) for key, entries in SEED_REPORT.items() for table, _ in entries]
    return sorted(rows, key=lambda row: row[0])  # stable: each table keeps its own order


def seed_sequence(tables12: Search, tables3: Search) -> tuple[Curve, list[str]]:
    """The best-so-far curve of the seed's runs one after another, from the reproduction's trials.

    Rows with no trial in the reproduction are left out and named. A row whose trial is already in the
    sequence is that run again, counted once: the base model, Table 1's H=128 and Table 2's decoder 1 (same
    figures), both from the Tables 1-2 search. Table 3's Z=2 is a run of its own (100 epochs, other figures)
    though its config is Table 2's decoder 6: it comes from the Table 3 search, a trial of its own.
    """
    curve: Curve = []
    best, spent, missing, chained = math.inf, 0, [], set[str]()
    for table, key in seed_order():
        search = tables3 if table == "Table 3" else tables12
        trial = _trial(search, key)
        if trial is None:
            missing.append(f"{table} H={key[0]} decoder={key[1]} Z={key[2]}")
            continue
        if trial.run_id in chained:
            continue
        chained.add(trial.run_id)
        for row in trial.history:
            value = row.get("val_loss", math.nan)
            best = min(best, value) if math.isfinite(value) else best
            spent += 1
            curve.append((spent, best))
    return curve, missing


def _trial(search: Search, key: tuple[int, int, int]) -> Trial | None:
    """The trial of this config that trained (not a replay), with the longest history."""
    found = [t for t in search.trials if t.key == key and not t.duplicate_of and t.history]
    return max(found, key=lambda t: t.epochs) if found else None


def compare(client: MlflowClient | None, experiments: list[str], seed: list[str] | None, out: Path) -> dict[str, Any]:
    """Draw every curve into `out` (PNG); per curve, the trial-epochs it spent and the best loss it reached.

    `seed`: the searches that reproduced Tables 1-2 and Table 3, then any reruns of Table 3's configs
    (`runs.combine`), for the seed's own sequence.
    """
    searches = [source(client, name) for name in experiments]
    curves: dict[str, Curve] = {search.name: best_so_far(search) for search in searches}
    summary: dict[str, Any] = {}
    if seed:
        tables3 = combine([source(client, name) for name in seed[1:]])
        curve, missing = seed_sequence(source(client, seed[0]), tables3)
        curves["the seed's sequence"] = curve
        summary["seed_sequence_missing"] = missing
    if not any(curves.values()):
        raise AnalysisError("experiment", "no trained epochs in any of the searches given")
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for label, curve in curves.items():
        points = [(x, y) for x, y in curve if math.isfinite(y)]
        if points:
            ax.step([x for x, _ in points], [y for _, y in points], where="post", label=label)
        summary[label] = {"trial_epochs": len(curve), "best_val_loss": points[-1][1] if points else None}
    if seed:  # the mark to beat: the seed's best figure, as the searches' losses are in nats per image
        target = min(value for entries in SEED_REPORT.values() for _, value in entries) / PER_BATCH
        ax.axhline(target, color="grey", linestyle="--", label=f"the seed's best ({target:.2f})")
        summary["seed_best"] = target
    return _saved(fig, ax, "best so far against compute", out, summary)


def _saved(fig: Figure, ax: Any, title: str, out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """A best-so-far plot's axes and legend, written to `out` (PNG); the summary, with the plot's path."""
    ax.set(xlabel="cumulative trial-epochs trained", ylabel="best validation loss so far (nats/img)", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    return {**summary, "plot": str(out)}


SEEDED = re.compile(r"^(?P<method>.+)-s(?P<seed>\d+)$")  # METHOD-sSEED: one search of a method, by its seed


def on_grid(curve: Curve, until: int) -> np.ndarray:
    """A best-so-far curve at every trial-epoch 1..until: inf before its first epoch, its last value after its end
    (a search that stopped keeps its best)."""
    values = np.full(until, math.inf)
    for x, y in curve:
        values[x - 1 :] = y
    return values


def reached(curve: Curve, target: float) -> int | None:
    """The trial-epochs a search spent before its best was at or below `target`; None if it never was."""
    return next((x for x, y in curve if y <= target), None)


def winner(search: Search) -> dict[str, Any] | None:
    """The search's best trial: its values, the epochs it trained, and where it came in the order the trials first
    reported (1: the first to report, the one ASHA lets run on at every empty rung), among how many trained."""
    trained = sorted((t for t in search.trials if t.history and not t.duplicate_of),
                     key=lambda t: t.history[0].get(LOGGED_AT, math.inf))  # fmt: skip
    best = search.best()
    if best is None or best not in trained:
        return None
    return {"params": best.params, "best_val_loss": best.best_val_loss, "epochs": best.epochs,
            "first_report_rank": trained.index(best) + 1, "trials": len(trained)}  # fmt: skip


def bands(client: MlflowClient | None, experiments: list[str], target: float | None, out: Path) -> dict[str, Any]:
    """Searches named METHOD-sSEED grouped by method: the median and quartiles over seeds of the best loss so far
    against cumulative trial-epochs, one band per method, drawn into `out`; per method, each seed's final best
    and the trial-epochs it needed to reach `target`, and its winner (`winner`)."""
    by_method: dict[str, dict[int, Curve]] = {}
    winners: dict[str, dict[int, dict[str, Any] | None]] = {}
    for name in experiments:
        search = source(client, name)
        match = SEEDED.match(search.name)
        if match is None:
            raise AnalysisError("experiment", f"{search.name}: --bands needs searches named METHOD-sSEED")
        by_method.setdefault(match["method"], {})[int(match["seed"])] = best_so_far(search)
        winners.setdefault(match["method"], {})[int(match["seed"])] = winner(search)
    until = max(len(c) for curves in by_method.values() for c in curves.values())
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    summary: dict[str, Any] = {"target": target, "methods": {}}
    x = np.arange(1, until + 1)
    for method, curves in sorted(by_method.items()):
        grid = np.stack([on_grid(c, until) for c in curves.values()])
        low, mid, high = np.percentile(grid, [25, 50, 75], axis=0)  # inf where fewer than a quarter have a value
        shown = np.isfinite(high)
        line = ax.step(x[shown], mid[shown], where="post", label=f"{method} (median of {len(curves)} seeds)")
        ax.fill_between(x[shown], low[shown], high[shown], step="post", alpha=0.2, color=line[0].get_color())
        finals = {seed: float(on_grid(c, until)[-1]) for seed, c in sorted(curves.items())}
        q1, median, q3 = np.percentile(list(finals.values()), [25, 50, 75])
        entry: dict[str, Any] = {"seeds": sorted(curves), "final_best": finals,
                                 "final_best_quartiles": [float(q1), float(median), float(q3)],
                                 "trial_epochs": {seed: len(c) for seed, c in sorted(curves.items())}}  # fmt: skip
        if target is not None:
            entry["epochs_to_target"] = {seed: reached(c, target) for seed, c in sorted(curves.items())}
        entry["winner"] = dict(sorted(winners[method].items()))
        summary["methods"][method] = entry
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", label=f"target ({target:g})")
    finite = [y for curves in by_method.values() for c in curves.values() for _, y in c if math.isfinite(y)]
    ax.set_ylim(min(finite) - 1, np.percentile(finite, 95))  # the first epochs' losses would flatten the rest
    return _saved(fig, ax, "best so far against compute: median and quartiles over seeds", out, summary)
