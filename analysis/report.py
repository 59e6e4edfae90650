"""`vaesearch report`: the seed's tables, curves and samples for one search, from MLflow alone.

Writes report.md and PNGs into a folder and logs them to the search's parent run. A search may also be read
back from the trials.csv an earlier report wrote (no server needed; no checkpoints, so no samples), and a
protocol run in parts (a rerun of the configs a lost machine left unfinished) reported as one.
"""

from __future__ import annotations

import csv
import math
import shutil
import tempfile
from pathlib import Path

from matplotlib.figure import Figure  # drawn straight to files: no pyplot, no GUI backend
from matplotlib.ticker import MaxNLocator
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from analysis import review
from analysis.runs import LOGGED_AT, Search, Trial, combine, is_trials_csv, source
from vae.checkpoint import load_model
from vae.figures import sample_grids
from vae.loss import PER_BATCH
from vae.records import DECODER, DUPLICATE_OF, END_STATE, ENDED, HIDDEN, LATENT, METRICS, MODEL_PARAMS

# The seed report's minimum validation losses (sums over a batch of 64), by (hidden, decoder, latent):
# Table 1 (decoder 1, Z=2, by H), Table 2 (H=128, Z=2, by decoder), Table 3 (H=128, decoder 6, by Z).
SEED_REPORT: dict[tuple[int, int, int], list[tuple[str, float]]] = {
    (64, 1, 2): [("Table 1", 9309.64)],
    (128, 1, 2): [("Table 1", 9101.28), ("Table 2", 9101.28)],
    (256, 1, 2): [("Table 1", 9178.56)],
    (128, 2, 2): [("Table 2", 9142.16)],
    (128, 3, 2): [("Table 2", 9094.46)],
    (128, 4, 2): [("Table 2", 9395.92)],
    (128, 5, 2): [("Table 2", 9158.79)],
    (128, 6, 2): [("Table 2", 9093.10), ("Table 3", 8989.65)],
    (128, 6, 5): [("Table 3", 6954.74)],
    (128, 6, 10): [("Table 3", 6035.80)],
    (128, 6, 20): [("Table 3", 5939.02)],
}

GROUPS = ((HIDDEN, "hidden size H"), (DECODER, "decoder id"), (LATENT, "latent size Z"))  # MODEL_PARAMS, titled


def verdict(ours_per_image: float, seed_per64: float, so_far: bool = False) -> str:
    """Our loss against the seed's, in percent of the seed's: within 2%, better (lower) or worse.

    `so_far` for a trial still running or stopped before its course ended (an interrupted search's, which
    `--resume` continues): its best loss can still go down, so the verdict is not final.
    """
    diff = (ours_per_image * PER_BATCH - seed_per64) / seed_per64
    word = "within 2%" if abs(diff) <= 0.02 else ("better" if diff < 0 else "worse")
    return f"ours {100 * diff:+.1f}%, {word}" + (" so far" if so_far else "")


def seed_figures(
    key: tuple[int, int, int], ours: float | None = None, comparable: bool = True, so_far: bool = False
) -> str:
    """The seed's figures for a config, with our difference; none where ours was measured on subsets."""
    if not comparable:
        return "- (subset run)"
    entries = SEED_REPORT.get(key, [])
    return (
        "; ".join(
            f"{label}: {value:.2f} ({value / PER_BATCH:.2f}/img)"
            + (f", {verdict(ours, value, so_far)}" if ours else "")
            for label, value in entries
        )
        or "-"
    )


def varied(trials: list[Trial], param: str) -> bool:
    """Whether the ranked trials hold two or more values of a parameter: else a table by it has one row."""
    return len({int(t.params[param]) for t in trials if t.rankable}) >= 2


def constants(trials: list[Trial]) -> str:
    """The model parameters every ranked trial shared, as `hidden=128, decoder=6` ('' for none)."""
    ranked = [t for t in trials if t.rankable]
    same = [k for k in MODEL_PARAMS if ranked and not varied(trials, k)]
    return ", ".join(f"{k}={int(ranked[0].params[k])}" for k in same)


def controlled(trials: list[Trial], param: str) -> tuple[list[Trial], dict[str, int]]:
    """The trials to compare a parameter's values over, and what they hold fixed.

    Where one slice of the model's other parameters (lr aside) has a trial at every value, that slice, as in
    the seed's tables (Table 1 varies H at decoder 1, Z=2); else every rankable trial, each value's best
    being whatever config won there.
    """
    rankable = [t for t in trials if t.rankable]
    others = [k for k in MODEL_PARAMS if k != param]
    values = {int(t.params[param]) for t in rankable}
    slices: dict[tuple[int, ...], list[Trial]] = {}
    for t in rankable:
        slices.setdefault(tuple(int(t.params[k]) for k in others), []).append(t)
    full = [(rest, ts) for rest, ts in slices.items() if {int(t.params[param]) for t in ts} == values]
    if len(values) < 2 or not full:
        return rankable, {}
    rest, pool = min(full, key=lambda item: min(t.best_val_loss for t in item[1]))
    return pool, dict(zip(others, rest, strict=True))


def best_by(trials: list[Trial], param: str) -> dict[int, Trial]:
    """The best trial for each value of one parameter, within `controlled`'s slice."""
    out: dict[int, Trial] = {}
    for t in controlled(trials, param)[0]:
        value = int(t.params[param])
        if value not in out or t.best_val_loss < out[value].best_val_loss:
            out[value] = t
    return dict(sorted(out.items()))


def _row(value: int, t: Trial, comparable: bool) -> str:
    best = next((r for r in t.history if r["epoch"] == t.best_epoch), {})
    config = ", ".join(f"{k}={t.params[k]}" for k in sorted(t.params))
    train = best.get("train_loss", math.nan)
    return (
        f"| {value} | {config} | {t.best_epoch} / {t.epochs} | {t.best_val_loss:.2f} | "
        f"{t.best_val_loss * PER_BATCH:.2f} | {train * PER_BATCH:.2f} | {t.end_state} | "
        f"{seed_figures(t.key, t.best_val_loss, comparable, t.end_state not in ENDED)} |"
    )


def _held(trials: list[Trial], param: str) -> str:
    """What `controlled` holds fixed for a parameter, as `decoder=1, latent=2` ('' for nothing)."""
    return ", ".join(f"{k}={v}" for k, v in controlled(trials, param)[1].items())


def table(trials: list[Trial], param: str, title: str, comparable: bool = True) -> list[str]:
    held = _held(trials, param)
    lines = [
        f"### By {title}" + (f" ({held} held fixed)" if held else ""),
        "",
        f"| {param} | config of the best trial | best epoch / epochs | val loss (nats/img) | val loss per 64 "
        "| train loss per 64 (best epoch) | end | seed (val, per 64) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(v, t, comparable) for v, t in best_by(trials, param).items()]
    return lines + [""]


def curves(trials: list[Trial], param: str, title: str, path: Path) -> Path:
    """Validation loss and KL per epoch for each group's best trial (the seed's Figures 2-4)."""
    held = _held(trials, param)
    title += f" ({held})" if held else ""
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_kl = fig.subplots(1, 2)
    for value, t in best_by(trials, param).items():
        epochs = [r["epoch"] for r in t.history]
        ax_loss.plot(epochs, [r.get("val_loss", math.nan) for r in t.history], marker="o", label=f"{param}={value}")
        ax_kl.plot(epochs, [r.get("val_kl", math.nan) for r in t.history], marker="o", label=f"{param}={value}")
    ax_loss.set(title=f"validation loss by {title}", xlabel="epoch", ylabel="nats per image")
    ax_kl.set(title=f"validation KL by {title}", xlabel="epoch", ylabel="nats per image")
    for ax in (ax_loss, ax_kl):  # epochs are whole: no 1.5 on the axis
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def asha_savings(search: Search) -> tuple[int, int, int]:
    """(epochs trained, epochs replayed for duplicates, epochs had every trial run to max_epochs)."""
    max_epochs = int(search.config.get("budget", {}).get("max_epochs", 0))
    trained = sum(t.epochs for t in search.trials if not t.duplicate_of)
    replayed = sum(t.epochs for t in search.trials if t.duplicate_of)
    return trained, replayed, max_epochs * len(search.trials)


def _grids(client: MlflowClient | None, trial: Trial, out: Path, prefix: str) -> list[str]:
    """Prior samples (and the manifold for Z=2) drawn from a run's best checkpoint, not its last epoch.

    Nothing where the checkpoint is not on the server (a trial read back from a trials.csv, or no server).
    """
    if client is None:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(trial.run_id, "checkpoint/best.pt", tmp)
        except (MlflowException, OSError):
            return []
        model, config, _ = load_model(local)
        paths = sample_grids(model.decoder, config.latent, tmp, seed=config.seed)
        written = []
        for path in paths:
            shutil.copy(path, out / f"{prefix}{path.name}")
            written.append(f"{prefix}{path.name}")
    return written


def samples_by_latent(client: MlflowClient | None, trials: list[Trial], out: Path) -> list[str]:
    """The seed's Figures 5-7 where a search varied Z: each latent size's best model, sampled alike."""
    groups = best_by(trials, LATENT)
    if len(groups) < 2:  # one latent size: the best run's grids above are the whole story
        return []
    lines = [
        "## Samples by latent size",
        "",
        "The seed's Figures 5-7: 100 draws from the prior N(0, I) (the same draws for every model of a size), "
        "decoded by each latent size's best trial at its best epoch, and for Z=2 the walk over [-1, 1]^2.",
        "",
    ]
    for latent, t in groups.items():
        names = _grids(client, t, out, f"z{latent}_")
        lines += [f"Z={latent}: trial {t.name}, {t.best_val_loss:.2f} nats/img at epoch {t.best_epoch}", ""]
        lines += [f"![Z={latent} {n.removeprefix(f'z{latent}_')[:-4]}]({n})" for n in names] or ["(no checkpoint)"]
        lines += [""]
    return lines


def subset_note(config: dict) -> str | None:
    """Why figures are not the seed's kind: trained or validated on part of the data, else None."""
    data = config.get("data", {})
    parts = []
    if data.get("subset"):
        parts.append(f"trained on the first {data['subset']:,} of the 50,000 training images")
    if data.get("val_subset"):
        parts.append(f"validated on the first {data['val_subset']:,} of the 10,000 validation images")
    return " and ".join(parts) or None


def write_trials_csv(search: Search, path: Path) -> Path:
    """One row per trial and epoch: the run, its params and end, and the epoch's metrics."""
    params = sorted({k for t in search.trials for k in t.params})
    columns = ["run_id", "name", *params, END_STATE, DUPLICATE_OF, "epoch", *METRICS, LOGGED_AT]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for t in sorted(search.trials, key=lambda t: t.name):
            head = {"run_id": t.run_id, "name": t.name, **t.params, END_STATE: t.end_state,
                    DUPLICATE_OF: t.duplicate_of or ""}  # fmt: skip
            for row in t.history:
                writer.writerow({**head, **row})
    return path


def review_section(search: Search, out: Path) -> list[str]:
    """What mattered: importance, parallel coordinates, best-so-far against compute, ASHA's rungs."""
    lines = ["## What mattered", ""]
    scores = review.importance(search)
    if scores:
        params = list(next(iter(scores.values())))
        lines += [
            "Importance of each searched parameter for the best validation loss (Optuna's evaluators on the "
            "trials as MLflow holds them; each column sums to 1):",
            "",
            "| parameter | " + " | ".join(scores) + " |",
            "|---|" + "---|" * len(scores),
        ]
        lines += [f"| {p} | " + " | ".join(f"{scores[e].get(p, 0.0):.2f}" for e in scores) + " |" for p in params]
        lines += [""]
    else:
        configs, needed = review.importance_support(search)
        lines += [f"Too few trials to rank parameters: {configs} distinct configs among the ranked trials, where "
                  f"importance needs {needed} ({review.CONFIGS_PER_PARAM} per parameter that varied).", ""]  # fmt: skip
    if review.parallel_coordinates(search, out / "parallel_coordinates.png"):
        lines += ["![parallel coordinates](parallel_coordinates.png)", ""]
    if review.plot_best_so_far(review.best_so_far(search), out / "best_so_far.png"):
        lines += ["![best so far](best_so_far.png)", ""]
    rungs = review.asha_rungs(search)
    if rungs:
        name = review.HALVING[search.config.get("scheduler", "asha")]
        lines += [f"| {name} rung (epoch) | trials that reached it | went on past it |", "|---|---|---|"]
        lines += [f"| {r} | {reached} | {kept} |" for r, reached, kept in rungs] + [""]
    return lines


def _head(search: Search, note: str | None) -> list[str]:
    """The title, the trials' ends, what the losses are, and whether they compare with the seed's."""
    states: dict[str, int] = {}
    for t in search.trials:
        states[t.end_state] = states.get(t.end_state, 0) + 1
    origin = (
        f"Parent run `{search.parent.info.run_id}`"
        if search.parent is not None
        else "Read back from trials.csv, which keeps no config (the seed's figures assume the full data sets)"
    )
    lines = [
        f"# Search `{search.name}`",
        "",
        f"{origin}; {len(search.trials)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ".",
        "",
        "Losses are the negative ELBO on the validation split, in nats per image and, as the seed reports "
        f"them, summed over a batch of {PER_BATCH}. The best run is the one with the lowest validation loss "
        "of any trial at any epoch (the seed's criterion); failed trials and replays of duplicates are left out "
        "of every ranking. Each trial's precision (fp32, or bf16 autocast of the training pass; validation is "
        "always fp32) is in its config.",
        "",
    ]
    if note:
        lines += [f"**Subset run:** {note}. Its losses are not comparable with the seed's full-set figures, "
                  "which are left out.", ""]  # fmt: skip
    return lines


def logs_to_parent(client: MlflowClient | None, names: list[str]) -> bool:
    """Whether the report is also logged to a parent run: only for one search read from the server."""
    return client is not None and len(names) == 1 and not is_trials_csv(names[0])


def _best_section(client: MlflowClient | None, best: Trial | None, comparable: bool, out: Path) -> list[str]:
    if best is None:
        return ["No trial finished with a finite loss.", ""]
    config = ", ".join(f"{k}={v}" for k, v in sorted(best.params.items()))
    return [
        "## Best run",
        "",
        f"Run `{best.run_id}` ({best.name}): {config}; val loss {best.best_val_loss:.2f} nats/img "
        f"({best.best_val_loss * PER_BATCH:.2f} per {PER_BATCH}) at epoch {best.best_epoch} of {best.epochs}. "
        f"Seed: {seed_figures(best.key, best.best_val_loss, comparable, best.end_state not in ENDED)}.",
        "",
        *(f"![{name}]({name})" for name in _grids(client, best, out, "best_")),
        "",
    ]


def _savings_section(search: Search) -> list[str]:
    trained, replayed, fifo = asha_savings(search)
    scheduler = search.config.get("scheduler", "asha")
    if not fifo or scheduler not in review.HALVING:  # a FIFO search has no scheduler to credit
        return []
    name = review.HALVING[scheduler]
    return [
        f"## What {name} saved",
        "",
        f"Trials trained {trained} epochs (and replayed {replayed} for duplicate configs) where training every "
        f"trial to max_epochs would take {fifo}: {100 * (1 - trained / fifo):.0f}% of the epochs saved "
        f"({name}'s stops, early stopping and duplicate replays together).",
        "",
    ]


def write_report(client: MlflowClient | None, experiments: str | list[str], out: Path) -> Path:
    """report.md and its PNGs in `out`; for one search on the server, also logged to its parent run under report/.

    `experiments`: a search's name or a trials.csv, or several, read as one (`runs.combine`: a later one's
    trial of a config replaces an earlier one's).
    """
    names = [experiments] if isinstance(experiments, str) else experiments
    search = combine([source(client, name) for name in names])
    out.mkdir(parents=True, exist_ok=True)
    best = search.best()
    note = subset_note(search.config)
    comparable = note is None
    lines = _head(search, note) + _best_section(client, best, comparable, out)
    groups = [(param, title) for param, title in GROUPS if varied(search.trials, param)]
    lines += ["## Tables in the seed's shape", ""]
    shared = constants(search.trials)
    if shared:
        lines += [f"Every ranked trial had {shared}: no table or curves by those.", ""]
    for param, title in groups:
        lines += table(search.trials, param, title, comparable)
    lines += ["## Curves", ""] if groups else []
    for param, title in groups:
        name = f"curves_{param}.png"
        curves(search.trials, param, title, out / name)
        lines += [f"![{title}]({name})", ""]
    lines += samples_by_latent(client, search.trials, out)
    lines += review_section(search, out)
    lines += _savings_section(search)
    write_trials_csv(search, out / "trials.csv")
    lines += ["Every trial's per-epoch metrics: [trials.csv](trials.csv) (re-plot without MLflow).", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    if client is not None and logs_to_parent(client, names):
        for path in sorted(out.iterdir()):
            if path.suffix in (".md", ".png", ".csv"):
                client.log_artifact(search.parent.info.run_id, str(path), "report")
    return report
