"""The seed's own sequence, assembled from a reproduction's trials in the seed's order (small fakes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from analysis.compare import seed_order, seed_sequence, winner
from analysis.report import write_trials_csv
from analysis.review import best_so_far
from analysis.runs import Search, Trial, combine, search_from_csv
from tests.helpers import assert_one_line_error, cli


def _trial(hidden: int, decoder: int, latent: int, losses: list[float], run: str = "", **tags: str) -> Trial:
    params = {"hidden": str(hidden), "decoder": str(decoder), "latent": str(latent)}
    history = [{"epoch": i, "val_loss": v, "logged_at": 1000.0 + 10 * i + hidden} for i, v in enumerate(losses, 1)]
    return Trial(run or f"r{hidden}-{decoder}-{latent}", "t", params, dict(tags), min(losses), history)


def test_the_seed_order_is_its_thirteen_runs_table_by_table() -> None:
    order = seed_order()
    assert len(order) == 13
    assert [key for table, key in order if table == "Table 1"] == [(64, 1, 2), (128, 1, 2), (256, 1, 2)]
    assert [key[1] for table, key in order if table == "Table 2"] == [1, 2, 3, 4, 5, 6]
    assert [key[2] for table, key in order if table == "Table 3"] == [2, 5, 10, 20]


def test_seed_sequence_chains_runs_in_order_and_names_the_missing() -> None:
    tables12 = Search("1", "t12", None, [_trial(64, 1, 2, [5.0, 4.0]), _trial(128, 1, 2, [6.0, 3.0, 3.5]),
                                         _trial(64, 1, 2, [5.0, 4.0], duplicate_of="r64-1-2")])  # fmt: skip
    tables12.trials.append(_trial(128, 6, 2, [3.2, 2.9], run="t12-d6"))
    tables3 = Search("2", "t3", None, [_trial(128, 6, 20, [2.0]), _trial(128, 6, 2, [3.1, 3.0, 2.5], run="t3-z2")])
    curve, missing = seed_sequence(tables12, tables3)
    # Table 1: H=64 (2 epochs), H=128 (3); Table 2's decoder 1 is that same run (the seed reports the same
    # figures), not trained again; Table 2's decoder 6 (2); Table 3: Z=2, the same config as decoder 6 but a
    # run of its own in the Table 3 search (3), and Z=20 (1)
    assert curve == [(1, 5.0), (2, 4.0), (3, 4.0), (4, 3.0), (5, 3.0), (6, 3.0), (7, 2.9), (8, 2.9), (9, 2.9),
                     (10, 2.5), (11, 2.0)]  # fmt: skip
    assert len(missing) == 13 - 6 and "Table 1 H=256 decoder=1 Z=2" in missing
    assert all(math.isfinite(y) for _, y in curve)


def test_a_search_read_back_from_its_trials_csv_draws_the_same_curves(tmp_path: Path) -> None:
    trials = [_trial(64, 1, 2, [5.0, 4.0], end_state="completed"), _trial(128, 1, 2, [6.0, 3.0, 3.5]),
              _trial(64, 1, 2, [5.0], run="replay", duplicate_of="r64-1-2", end_state="completed")]  # fmt: skip
    search = Search("1", "t12", None, trials)
    back = search_from_csv(write_trials_csv(search, tmp_path / "t12.csv"))
    assert back.name == "t12" and len(back.trials) == 3
    assert best_so_far(back) == best_so_far(search) == [(1, 5.0), (2, 4.0), (3, 4.0), (4, 3.0), (5, 3.0)]
    assert seed_sequence(back, back) == seed_sequence(search, search)
    replay = next(t for t in back.trials if t.duplicate_of)
    assert replay.duplicate_of == "r64-1-2" and replay.end_state == "completed" and replay.key == (64, 1, 2)


def test_compare_draws_from_trials_csv_files_with_no_server_running(tmp_path: Path) -> None:
    """The committed CSVs of docs/reproduction redraw its plot on a machine that has never run a server."""
    tables12 = Search("1", "t12", None, [_trial(64, 1, 2, [5.0, 4.0]), _trial(128, 6, 2, [3.2, 2.9])])
    tables3 = Search("2", "t3", None, [_trial(128, 6, 20, [2.0, 1.5])])
    a, b = write_trials_csv(tables12, tmp_path / "t12.csv"), write_trials_csv(tables3, tmp_path / "t3.csv")
    home = {"VAESEARCH_HOME": str(tmp_path / "home")}  # no server.json: no embedded server was ever started
    out = tmp_path / "plot.png"
    proc = cli("compare", "--experiment", str(a), "--seed-sequence", str(a), str(b), "--out", str(out), env=home)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.stat().st_size > 0 and summary["the seed's sequence"]["best_val_loss"] == 1.5
    named = cli("compare", "--experiment", "some-search", "--out", str(out), env=home)
    assert_one_line_error(named, "--tracking-uri")  # a search's name still needs a server
    # a rerun of Table 3's Z=20 after TABLES3 replaces its trial in the seed's sequence
    rerun = write_trials_csv(
        Search("3", "z20", None, [_trial(128, 6, 20, [1.8, 1.2, 1.1], run="z20")]), tmp_path / "z20.csv"
    )
    proc = cli("compare", "--seed-sequence", str(a), str(b), str(rerun), "--out", str(out), env=home)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])["the seed's sequence"]
    assert summary == {"trial_epochs": 4 + 3, "best_val_loss": 1.1}
    assert_one_line_error(cli("compare", "--seed-sequence", str(a), "--out", str(out), env=home), "--seed-sequence")


def test_a_rerun_replaces_the_stopped_trial_of_its_config_and_keeps_the_rest() -> None:
    stopped = _trial(128, 6, 5, [120.0, 111.0], run="stopped", end_state="interrupted")
    first = Search("1", "t3", None, [_trial(128, 6, 2, [140.0]), stopped, _trial(128, 6, 20, [95.0])])
    first.trials[1].params["precision"] = "fp32"
    rerun = _trial(128, 6, 5, [119.0, 110.0, 108.5], run="rerun", end_state="completed")
    rerun.params["precision"] = "bf16"  # another machine's precision is the same experiment
    other_lr = _trial(128, 6, 20, [96.0], run="lr")
    other_lr.params["lr"] = "0.003"  # another sampled value is another experiment: kept beside the first
    both = combine([first, Search("2", "t3-z5", None, [rerun, other_lr])])
    assert sorted(t.run_id for t in both.trials) == ["lr", "r128-6-2", "r128-6-20", "rerun"]
    assert both.name == "t3 + t3-z5" and combine([first]) is first


def test_report_reads_trials_csv_files_as_one_search_with_no_server(tmp_path: Path) -> None:
    """docs/reproduction's Table 3 is a run stopped with its machine plus the rerun of its unfinished row."""
    z2 = _trial(128, 6, 2, [142.0, 140.0], end_state="early_stopped")
    first = Search("1", "t3", None, [z2, _trial(128, 6, 5, [120.0, 111.0], run="stopped", end_state="interrupted")])
    rerun = Search("2", "t3-z5", None, [_trial(128, 6, 5, [119.0, 110.0, 108.5], run="rerun", end_state="completed")])
    a, b = write_trials_csv(first, tmp_path / "t3.csv"), write_trials_csv(rerun, tmp_path / "t3-z5.csv")
    home = {"VAESEARCH_HOME": str(tmp_path / "home")}  # no embedded server was ever started
    out = tmp_path / "report"
    proc = cli("report", "--experiment", str(a), "--experiment", str(b), "--out", str(out), env=home)
    assert proc.returncode == 0, proc.stderr
    report = (out / "report.md").read_text()
    assert "Read back from trials.csv" in report and "2 trials: 1 completed, 1 early_stopped." in report
    # Z=5's row is the rerun's: 108.50 nats/img = 6944.00 per 64 against the seed's 6954.74
    assert "| 5 | decoder=6, hidden=128, latent=5 | 3 / 3 | 108.50 | 6944.00 |" in report
    assert "Table 3: 6954.74 (108.67/img), ours -0.2%, within 2%" in report
    assert (out / "curves_latent.png").stat().st_size > 1000 and not list(out.glob("z*_samples.png"))
    merged = search_from_csv(out / "trials.csv")
    assert sorted((t.run_id, t.epochs) for t in merged.trials) == [("r128-6-2", 2), ("rerun", 3)]
    named = cli("report", "--experiment", str(a), "--experiment", "some-search", "--out", str(out), env=home)
    assert_one_line_error(named, "--tracking-uri")  # a search's name still needs a server


def test_bands_group_searches_by_method_over_seeds_and_time_each_to_the_target(tmp_path: Path) -> None:
    """Two methods, two seeds each, from trials.csv files named METHOD-sSEED: medians, quartiles, epochs to target."""
    curves = {"a-s0": [5.0, 4.0, 3.0], "a-s1": [6.0, 2.0], "b-s0": [5.0, 5.0, 5.0, 4.5], "b-s1": [4.0]}
    files = []
    for name, losses in curves.items():
        search = Search("1", name, None, [_trial(64, 1, 2, losses, end_state="completed")])
        files.append(str(write_trials_csv(search, tmp_path / f"{name}.csv")))
    proc = cli("compare", *(f"--experiment={f}" for f in files), "--bands", "--target", "3.0",
               "--out", str(tmp_path / "bands.png"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    a, b = summary["methods"]["a"], summary["methods"]["b"]
    assert a["final_best"] == {"0": 3.0, "1": 2.0} and a["epochs_to_target"] == {"0": 3, "1": 2}
    assert b["final_best"] == {"0": 4.5, "1": 4.0} and b["epochs_to_target"] == {"0": None, "1": None}
    assert b["final_best_quartiles"] == [4.125, 4.25, 4.375] and a["trial_epochs"] == {"0": 3, "1": 2}
    assert a["winner"]["1"]["best_val_loss"] == 2.0 and a["winner"]["1"]["first_report_rank"] == 1
    assert (tmp_path / "bands.png").stat().st_size > 0
    misnamed = cli("compare", f"--experiment={files[0]}", "--target", "3", "--out", str(tmp_path / "x.png"))
    assert_one_line_error(misnamed, "target")


def test_a_searchs_winner_says_where_it_came_in_the_order_of_first_reports() -> None:
    """ASHA lets the first trial to report run on at every empty rung: the bands say whether that trial won."""
    trials = [_trial(128, 1, 2, [4.0]), _trial(64, 6, 20, [5.0, 4.0, 3.0]), _trial(32, 1, 2, [6.0]),
              _trial(64, 6, 20, [5.0, 4.0, 3.0], run="replay", duplicate_of="r64-6-20")]  # fmt: skip
    won = winner(Search("1", "m-s0", None, trials))
    assert won is not None and won["params"]["latent"] == "20" and won["best_val_loss"] == 3.0
    assert (won["epochs"], won["first_report_rank"], won["trials"]) == (3, 2, 3)  # H=32 reported first; no replay
