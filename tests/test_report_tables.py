"""Which trials the report's per-parameter tables and curves compare."""

from __future__ import annotations

from analysis.report import best_by, constants, controlled, table, varied
from analysis.runs import Trial


def _trial(name: str, hidden: int, decoder: int, latent: int, loss: float, **tags: str) -> Trial:
    params = {"hidden": hidden, "decoder": decoder, "latent": latent}
    history = [{"epoch": 1, "val_loss": loss, "train_loss": loss}]
    return Trial(name, name, params, {"end_state": "completed", **tags}, loss, history)


# Tables 1 and 2 of the seed in one search: decoder 1 at three H, then decoder 3 at H=128
TABLES_12 = [
    _trial("h64", 64, 1, 2, 144.0),
    _trial("h128", 128, 1, 2, 145.0),
    _trial("h256", 256, 1, 2, 147.0),
    _trial("d3", 128, 3, 2, 140.0),
    _trial("d3-failed", 64, 3, 2, 100.0, end_state="failed"),
]


def test_a_slice_with_every_value_is_compared_as_the_seed_does() -> None:
    # by H: decoder 1, Z=2 has all three sizes, so H=128's row is decoder 1's run, not the better decoder 3
    assert {h: t.name for h, t in best_by(TABLES_12, "hidden").items()} == {64: "h64", 128: "h128", 256: "h256"}
    assert controlled(TABLES_12, "hidden")[1] == {"decoder": 1, "latent": 2}
    # by decoder: H=128 has both; H=64's decoder 1 (144, lower than H=128's 145) is not that comparison
    assert {d: t.name for d, t in best_by(TABLES_12, "decoder").items()} == {1: "h128", 3: "d3"}
    assert table(TABLES_12, "decoder", "decoder id")[0] == "### By decoder id (hidden=128, latent=2 held fixed)"


def test_without_such_a_slice_each_value_is_its_best_anywhere() -> None:
    trials = [_trial("a", 64, 1, 2, 150.0), _trial("b", 128, 6, 2, 120.0), _trial("c", 128, 1, 5, 110.0)]
    assert {h: t.name for h, t in best_by(trials, "hidden").items()} == {64: "a", 128: "c"}
    assert controlled(trials, "hidden")[1] == {}
    assert table(trials, "hidden", "hidden size H")[0] == "### By hidden size H"
    # one value only: nothing to hold fixed
    assert controlled(trials[:1], "latent") == ([trials[0]], {})


def test_a_parameter_every_trial_shared_gets_no_table() -> None:
    # Tables 1-2 hold Z=2 throughout; the failed trial's H=64, decoder 3 counts for nothing
    assert [p for p in ("hidden", "decoder", "latent") if varied(TABLES_12, p)] == ["hidden", "decoder"]
    assert constants(TABLES_12) == "latent=2"
    table_3 = [_trial(f"z{z}", 128, 6, z, 100.0 + z) for z in (2, 5, 10, 20)]
    assert constants(table_3) == "hidden=128, decoder=6" and varied(table_3, "latent")


def test_a_trial_that_has_not_ended_is_judged_so_far_not_for_good() -> None:
    trials = [
        _trial("z5", 128, 6, 5, 110.0, end_state="running"),
        _trial("z10", 128, 6, 10, 94.0),
        _trial("z20", 128, 6, 20, 95.6, end_state="killed"),  # an interrupted search's, for --resume
        _trial("z2", 128, 6, 2, 150.0, end_state="early_stopped"),
    ]
    rows = dict(zip((2, 5, 10, 20), table(trials, "latent", "latent size Z")[4:8], strict=True))
    assert "| running | Table 3: 6954.74 (108.67/img), ours +1.2%, within 2% so far |" in rows[5]
    assert rows[10].endswith("| completed | Table 3: 6035.80 (94.31/img), ours -0.3%, within 2% |")
    assert rows[20].endswith("| killed | Table 3: 5939.02 (92.80/img), ours +3.0%, worse so far |")
    assert rows[2].endswith("ours +6.8%, worse |")


def test_importance_waits_for_enough_distinct_configs_per_parameter() -> None:
    import itertools
    import json
    import random
    from types import SimpleNamespace

    from analysis.review import CONFIGS_PER_PARAM, importance, importance_support
    from analysis.runs import Search

    space = {"hidden": [64, 128, 256], "decoder": [1, 2, 3, 5, 6], "latent": [2, 5, 10]}
    parent = SimpleNamespace(data=SimpleNamespace(params={"config": json.dumps({"space": space})}))
    grid = list(itertools.product(space["hidden"], space["decoder"], space["latent"]))

    def search(n: int) -> Search:
        trials = []
        for i, (h, d, z) in enumerate(random.Random(0).sample(grid, n)):
            params = {"hidden": str(h), "decoder": str(d), "latent": str(z)}
            trials.append(Trial(f"r{i}", f"t{i}", params, {"end_state": "completed"}, 200.0 - z - d / 10))
        return Search("1", "s", parent, trials)

    few, enough = search(6), search(3 * CONFIGS_PER_PARAM)
    assert importance_support(few) == (6, 3 * CONFIGS_PER_PARAM) and importance(few) == {}
    scores = importance(enough)
    assert set(scores) == {"fANOVA", "PED-ANOVA"} and max(scores["fANOVA"], key=scores["fANOVA"].get) == "latent"
