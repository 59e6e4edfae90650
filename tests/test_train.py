from pathlib import Path

import torch

from vae import checkpoint
from vae.checkpoint import load_model
from vae.config import TrainConfig
from vae.data import Split, to_float
from vae.train import Trainer

SMALL = dict(decoder=1, hidden=32, latent=2, subset=512, val_subset=256, batch_size=64, precision="fp32")


def test_loss_falls_over_a_few_epochs_on_real_mnist(splits: dict[str, Split]) -> None:
    trainer = Trainer(TrainConfig(**SMALL, epochs=4), splits)
    losses = [trainer.step().metrics["val_loss"] for _ in range(4)]
    assert losses[-1] < losses[0] - 20, losses
    assert 100 < losses[-1] < 400


def test_a_fixed_seed_gives_the_same_losses(splits: dict[str, Split]) -> None:
    runs = [[Trainer(TrainConfig(**SMALL, seed=3), splits).step().metrics for _ in range(1)] for _ in range(2)]
    for a, b in zip(*runs, strict=False):
        assert {k: v for k, v in a.items() if k != "epoch_seconds"} == {
            k: v for k, v in b.items() if k != "epoch_seconds"
        }


def test_resume_from_a_checkpoint_equals_an_unbroken_run(splits: dict[str, Split], tmp_path: Path) -> None:
    config = TrainConfig(**SMALL, epochs=3)
    unbroken = Trainer(config, splits)
    full = [unbroken.step().metrics["val_loss"] for _ in range(3)]

    first = Trainer(config, splits)
    first.step()
    first.save(tmp_path / "last.pt")
    resumed = Trainer(config, splits)
    resumed.restore(tmp_path / "last.pt")
    rest = [resumed.step().metrics["val_loss"] for _ in range(2)]
    assert rest == full[1:]
    assert resumed.epoch == 3 and len(resumed.history) == 3


def test_checkpoint_round_trip_gives_identical_outputs(splits: dict[str, Split], tmp_path: Path) -> None:
    trainer = Trainer(TrainConfig(**SMALL), splits)
    trainer.step()
    trainer.save(tmp_path / "c.pt")
    model, config, state = load_model(tmp_path / "c.pt")
    assert config == trainer.config and state["epoch"] == 1
    x = to_float(splits["val"].images[:16])
    trainer.model.eval()
    with torch.no_grad():
        mu_a, logvar_a = trainer.model.encode(x)
        mu_b, logvar_b = model.encode(x)
        assert torch.equal(mu_a, mu_b) and torch.equal(logvar_a, logvar_b)
        assert torch.equal(trainer.model.decode(mu_a), model.decode(mu_b))


def test_checkpoints_load_with_weights_only_and_leave_no_temp_files(splits: dict[str, Split], tmp_path: Path) -> None:
    trainer = Trainer(TrainConfig(**SMALL), splits)
    trainer.save(tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert isinstance(state["rng"]["shuffle"], torch.Tensor)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_early_stopping_ends_after_patience_epochs_without_improvement(splits: dict[str, Split]) -> None:
    trainer = Trainer(TrainConfig(**SMALL, epochs=50, patience=2), splits)
    trainer.best_val_loss = -1.0  # nothing can beat this, so every epoch is "no improvement"
    results = [trainer.step(), trainer.step()]
    assert results[0].stop is None
    assert results[1].stop == "early_stopped"


def test_divergence_ends_the_run_as_failed(splits: dict[str, Split]) -> None:
    trainer = Trainer(TrainConfig(**SMALL, lr=9.0), splits)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.fill_(float("nan"))
    result = trainer.step()
    assert result.stop == "failed" and "diverged" in result.reason


def test_corrupt_checkpoint_is_refused_by_name(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    try:
        checkpoint.load(bad)
    except checkpoint.CheckpointError as e:
        assert "bad.pt" in str(e)
    else:
        raise AssertionError("a corrupt checkpoint was accepted")


def test_an_improvement_resets_the_early_stopping_count(splits: dict[str, Split]) -> None:
    trainer = Trainer(TrainConfig(**SMALL, epochs=50, patience=2), splits)
    trainer.best_val_loss = -1.0
    stops = [trainer.step().stop]  # 1 epoch without improvement
    trainer.best_val_loss = float("inf")
    result = trainer.step()  # improves: the count starts again
    assert result.improved and result.stop is None
    trainer.best_val_loss = -1.0  # nothing improves from here; best_epoch stays 2
    stops += [result.stop, trainer.step().stop, trainer.step().stop]
    assert stops == [None, None, None, "early_stopped"]


def test_a_trainer_restored_from_its_last_checkpoint_knows_it_is_done(splits: dict[str, Split], tmp_path: Path) -> None:
    trainer = Trainer(TrainConfig(**SMALL, epochs=2), splits)
    trainer.step()
    assert trainer.end_state() == (None, "")
    assert trainer.step().stop == "completed"
    trainer.save(tmp_path / "last.pt")
    restored = Trainer(TrainConfig(**SMALL, epochs=2), splits)
    assert restored.end_state() == (None, "")
    restored.restore(tmp_path / "last.pt")
    assert restored.end_state() == ("completed", "reached 2 epochs")


def test_restore_reads_generator_states_on_the_cpu_on_any_device(splits: dict[str, Split], tmp_path: Path) -> None:
    """torch.Generator.set_state takes only a CPU ByteTensor: a CUDA trainer must not map states to its device."""
    trainer = Trainer(TrainConfig(**SMALL), splits)
    trainer.step()
    trainer.save(tmp_path / "last.pt")
    other = Trainer(TrainConfig(**SMALL), splits)
    other.device = torch.device("meta")  # a non-CPU location, where no GPU exists
    other.restore(tmp_path / "last.pt")
    assert torch.equal(other.shuffle.get_state(), trainer.shuffle.get_state()) and other.epoch == 1
