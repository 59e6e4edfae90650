"""What mattered in a search: hyperparameter importance, parallel coordinates, best-so-far, ASHA's rungs.

All of it from the search as MLflow holds it (`analysis.runs`): the Optuna
study is rebuilt in memory from the trials' params and best losses, so a
search is reviewed from the tracking server alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
from matplotlib import colormaps
from matplotlib.figure import Figure

from analysis.runs import LOGGED_AT, AnalysisError, Search, Trial
from vae.records import LR, SEARCHED, EndState, rung_epochs


def searched_params(search: Search) -> list[str]:
    """The parameters the search sampled (its config's space), in a fixed order."""
    space = search.config.get("space", {})
    return [k for k in SEARCHED if space.get(k) is not None]


def _value(text: str) -> float | int:
    number = float(text)
    return int(number) if number.is_integer() and "." not in text and "e" not in text else number


def study_of(search: Search) -> optuna.Study:
    """An in-memory Optuna study of the ranked trials: their searched params and best validation loss."""
    params = searched_params(search)
    ranked = [t for t in search.trials if t.rankable]
    values = {p: sorted({_value(t.params[p]) for t in ranked}) for p in params}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    for t in ranked:
        distributions: dict[str, optuna.distributions.BaseDistribution] = {
            p: (
                optuna.distributions.FloatDistribution(min(values[p]), max(values[p]), log=True)
                if p == LR
                else optuna.distributions.CategoricalDistribution(values[p])
            )
            for p in params
        }
        chosen = {p: _value(t.params[p]) for p in params}
        study.add_trial(optuna.trial.create_trial(params=chosen, distributions=distributions, value=t.best_val_loss))
    return study


# Below this many distinct configs per parameter that varied, importance ranks noise (6 configs once gave
# decoder 0.70 by fANOVA and 0.34 by the dashboard's evaluator): the report says so instead of a table.
CONFIGS_PER_PARAM = 5


def _varied(search: Search, study: optuna.Study) -> list[str]:
    return [p for p in searched_params(search) if len({t.params[p] for t in study.trials}) > 1]


def _support(study: optuna.Study, varied: list[str]) -> tuple[int, int]:
    configs = len({tuple(t.params[p] for p in varied) for t in study.trials})
    return configs, CONFIGS_PER_PARAM * max(len(varied), 1)


def importance_support(search: Search) -> tuple[int, int]:
    """(distinct configs among the ranked trials, how many importance needs: CONFIGS_PER_PARAM per varied param)."""
    study = study_of(search)
    return _support(study, _varied(search, study))


def importance(search: Search) -> dict[str, dict[str, float]]:
    """Importance of each searched parameter for best_val_loss, by fANOVA and by PED-ANOVA; {} with too few configs."""
    study = study_of(search)
    varied = _varied(search, study)
    configs, needed = _support(study, varied)
    if configs < needed:
        return {}
    evaluators = {
        "fANOVA": optuna.importance.FanovaImportanceEvaluator(seed=0),
        "PED-ANOVA": optuna.importance.PedAnovaImportanceEvaluator(),
    }
    out = {}
    for name, evaluator in evaluators.items():
        try:
            scores = optuna.importance.get_param_importances(study, evaluator=evaluator, params=varied)
        except (ValueError, RuntimeError):  # an evaluator that cannot judge so few trials is left out
            continue
        out[name] = {p: float(v) for p, v in scores.items()}
    return out


def parallel_coordinates(search: Search, path: Path) -> Path | None:
    """Each ranked trial a line across its searched params to its best loss, darker for lower."""
    params = searched_params(search)
    ranked = [t for t in search.trials if t.rankable]
    if not ranked:
        return None
    axes = [*params, "best_val_loss"]
    levels = {p: sorted({_value(t.params[p]) for t in ranked}) for p in params}
    losses = [t.best_val_loss for t in ranked]
    lo, hi = min(losses), max(losses)

    def position(t: Trial, axis: str) -> float:
        if axis == "best_val_loss":
            return 0.5 if hi == lo else (t.best_val_loss - lo) / (hi - lo)
        choices = levels[axis]
        return 0.5 if len(choices) == 1 else choices.index(_value(t.params[axis])) / (len(choices) - 1)

    fig = Figure(figsize=(2 + 1.8 * len(axes), 4))
    ax = fig.subplots()
    cmap = colormaps["viridis"]
    for t in sorted(ranked, key=lambda t: -t.best_val_loss):  # the best drawn last, on top
        shade = 0.0 if hi == lo else (t.best_val_loss - lo) / (hi - lo)
        ax.plot(range(len(axes)), [position(t, a) for a in axes], color=cmap(shade), alpha=0.8)
    for i, axis in enumerate(axes):
        ax.axvline(i, color="grey", lw=0.5)
        labels = [f"{lo:.1f}", f"{hi:.1f}"] if axis == "best_val_loss" else [str(v) for v in levels[axis]]
        for j, label in enumerate(labels):
            ax.text(i + 0.03, 0.5 if len(labels) == 1 else j / (len(labels) - 1), label, fontsize=8)
    ax.set_xticks(range(len(axes)), axes)
    ax.set_yticks([])
    ax.set_title("trials: searched values to best validation loss (nats/img; darker is lower)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def best_so_far(search: Search) -> list[tuple[int, float]]:
    """(cumulative trial-epochs, best validation loss so far) as the epochs were trained, in time order.

    Replays of duplicates cost no training and are left out; failed trials' epochs count (they were paid for).
    """
    events = []
    for t in search.trials:
        if t.duplicate_of:
            continue
        for row in t.history:
            if "val_loss" not in row:
                continue
            if LOGGED_AT not in row:
                raise AnalysisError("experiment", f"{search.name}: epochs with no time they were logged at")
            events.append((row[LOGGED_AT], row["val_loss"], t.end_state != EndState.FAILED))
    curve, best = [], math.inf
    for i, (_, value, counts) in enumerate(sorted(events), start=1):
        if counts and math.isfinite(value):
            best = min(best, value)
        curve.append((i, best))
    return curve


def plot_best_so_far(curve: list[tuple[int, float]], path: Path) -> Path | None:
    points = [(x, y) for x, y in curve if math.isfinite(y)]
    if not points:
        return None
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.step([x for x, _ in points], [y for _, y in points], where="post")
    ax.set(xlabel="cumulative trial-epochs trained", ylabel="best validation loss so far (nats/img)",
           title="best so far against compute")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


HALVING = {"asha": "ASHA", "promotion": "promotion"}  # the schedulers with rungs, as a report names them


def asha_rungs(search: Search) -> list[tuple[int, int, int]]:
    """(rung epoch, trials that reached it, trials that went on past it), for an ASHA or promotion search;
    [] otherwise."""
    config: dict[str, Any] = search.config
    if config.get("scheduler", "asha") not in HALVING or "asha" not in config:
        return []
    asha = config["asha"]
    rungs = rung_epochs(config["budget"]["max_epochs"], asha["grace_period"], asha["reduction_factor"])
    epochs = [t.epochs for t in search.trials if t.end_state != EndState.FAILED]
    return [(r, sum(e >= r for e in epochs), sum(e > r for e in epochs)) for r in rungs]
