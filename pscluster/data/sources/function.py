"""The user's own data: a function in the shipped code, ``make_dataset(split, **args)``.

It runs on every worker, where the data is (a mounted volume, a local folder), and returns a
map-style dataset of (x, y) samples: decoding and augmentation happen there, per sample, in
the DataLoader's processes. Its randomness is seeded per sample by the loader
(:mod:`pscluster.data.loading`), so a re-leased partition reads exactly the same samples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from pscluster.data.sources.base import SampleSet
from pscluster.errors import InvalidArgument


class FunctionSource:
    kind: ClassVar[str] = "function"
    seeds_samples: ClassVar[bool] = True

    def __init__(self, function: Callable[..., object], ref: str, args: Mapping[str, Any]):
        self.function, self.ref, self.args = function, ref, dict(args)

    def open(self, split: str) -> SampleSet:
        try:
            samples = self.function(split, **self.args)
        except InvalidArgument:
            raise
        except Exception as e:  # the user's code: their error, with where it came from
            raise DataSourceError(
                f"the data function {self.ref}({split!r}, **{self.args!r}) raised "
                f"{type(e).__name__}: {e}"
            ) from e
        if not (hasattr(samples, "__len__") and hasattr(samples, "__getitem__")):
            raise InvalidArgument(
                f"the data function {self.ref} returned {type(samples).__name__} for split "
                f"{split!r}; it must return a map-style dataset (__len__ and __getitem__)"
            )
        return samples  # type: ignore[return-value]


class DataSourceError(InvalidArgument):
    """The user's data code failed: the same call fails on every worker."""
