"""A log-bucketed latency histogram in the style of HdrHistogram. Sans-I/O, mergeable.

Values are non-negative integers (wirecat's load generator records nanoseconds). Each power
of two is split into ``2 ** (precision_bits - 1)`` equal sub-buckets, so a recorded value is
known to within a relative error of ``2 ** -(precision_bits - 1)`` (0.1 % with the default
11 bits, about three significant digits), and values below ``2 ** precision_bits`` are kept
exactly. Memory is fixed at construction: one counter per bucket up to ``max_value``; larger
values are counted in the last bucket (``max`` still holds the exact largest value).

Histograms recorded in different processes merge exactly (:meth:`Histogram.merge`) and
travel between processes as plain dicts (:meth:`Histogram.to_dict`,
:meth:`Histogram.from_dict`).

Example::

    >>> h = Histogram()
    >>> for v in range(1, 101):
    ...     h.record(v)
    >>> h.percentile(50), h.percentile(99), h.count
    (50, 99, 100)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

__all__ = ["Histogram"]

_DEFAULT_BITS = 11
_DEFAULT_MAX = 1 << 42  # ns: about 73 minutes


class Histogram:
    """Counts of integer values in log-spaced buckets.

    Args:
        precision_bits: sub-bucket resolution; 2-20. Relative error is at most
            ``2 ** -(precision_bits - 1)``.
        max_value: largest value tracked in its own bucket (>= ``2 ** precision_bits``);
            larger values land in the top bucket.

    Raises:
        ValueError: an argument out of range.

    Attributes:
        count: number of values recorded.
        total: sum of the values recorded (for the mean).
        min: smallest value recorded (0 when empty).
        max: largest value recorded (0 when empty).

    Not thread-safe; one histogram per event loop, merged at the end.
    """

    __slots__ = ("_bits", "_counts", "_half", "_sub", "count", "max", "min", "total")

    def __init__(self, *, precision_bits: int = _DEFAULT_BITS, max_value: int = _DEFAULT_MAX):
        if not 2 <= precision_bits <= 20:
            raise ValueError(f"precision_bits must be 2..20, got {precision_bits}")
        if max_value < (1 << precision_bits):
            raise ValueError(f"max_value must be >= {1 << precision_bits}, got {max_value}")
        self._bits = precision_bits
        self._sub = 1 << precision_bits
        self._half = self._sub >> 1
        self._counts = [0] * (self.index_of(max_value) + 1)
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0

    @property
    def precision_bits(self) -> int:
        """The sub-bucket resolution this histogram was built with."""
        return self._bits

    @property
    def relative_error(self) -> float:
        """Worst-case relative error of a reported value, e.g. 0.001 for 11 bits."""
        return 1.0 / self._half

    def index_of(self, value: int) -> int:
        """Return the bucket index of ``value`` (no clamping to the top bucket)."""
        if value < self._sub:
            return value
        shift = value.bit_length() - self._bits
        return shift * self._half + (value >> shift)

    def bucket_range(self, index: int) -> tuple[int, int]:
        """Return the lowest and highest value (inclusive) that map to bucket ``index``."""
        if index < self._sub:
            return index, index
        shift = (index - self._sub) // self._half + 1
        mantissa = index - shift * self._half
        return mantissa << shift, ((mantissa + 1) << shift) - 1

    def record(self, value: int, n: int = 1) -> None:
        """Count ``value`` ``n`` times.

        Raises:
            ValueError: ``value`` or ``n`` is negative.
        """
        if value < 0 or n < 0:
            raise ValueError(f"cannot record a negative value or count ({value}, {n})")
        if n == 0:
            return
        if value < self._sub:
            index = value
        else:
            shift = value.bit_length() - self._bits
            index = shift * self._half + (value >> shift)
        counts = self._counts
        if index >= len(counts):
            index = len(counts) - 1
        counts[index] += n
        if self.count == 0 or value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.count += n
        self.total += value * n

    def reset(self) -> None:
        """Forget every value recorded."""
        self._counts = [0] * len(self._counts)
        self.count = self.total = self.min = self.max = 0

    @property
    def mean(self) -> float:
        """Arithmetic mean of the values recorded (0.0 when empty)."""
        return self.total / self.count if self.count else 0.0

    def percentile(self, q: float) -> int:
        """Return the value at percentile ``q`` (0-100), by the nearest-rank definition.

        The result is the highest value of the bucket that holds the ``ceil(q/100 * count)``-th
        smallest value, clamped to ``[min, max]``: exact below ``2 ** precision_bits``, within
        :attr:`relative_error` above. ``percentile(0)`` is ``min``; 0 when empty.

        Raises:
            ValueError: ``q`` outside 0-100.
        """
        return self.percentiles([q])[0]

    def percentiles(self, qs: Iterable[float]) -> list[int]:
        """Return :meth:`percentile` for each of ``qs`` in one pass over the buckets.

        Raises:
            ValueError: a ``q`` outside 0-100.
        """
        wanted = list(qs)
        for q in wanted:
            if not 0.0 <= q <= 100.0 or math.isnan(q):
                raise ValueError(f"percentile must be within 0..100, got {q}")
        if self.count == 0:
            return [0 for _ in wanted]
        # Exact rank arithmetic: Fraction(str(99.9)) is 999/10, so rank(99.9 % of 1000) == 999.
        ranks = [max(1, math.ceil(Fraction(str(q)) * self.count / 100)) for q in wanted]
        order = sorted(range(len(wanted)), key=lambda i: ranks[i])
        results = [0] * len(wanted)
        seen = 0
        pos = 0
        for index, n in enumerate(self._counts):
            if not n:
                continue
            seen += n
            while pos < len(order) and ranks[order[pos]] <= seen:
                high = self.bucket_range(index)[1]
                results[order[pos]] = min(max(high, self.min), self.max)
                pos += 1
            if pos == len(order):
                break
        for i, q in enumerate(wanted):
            if q == 0:
                results[i] = self.min
        return results

    def merge(self, other: Histogram) -> None:
        """Add every count of ``other`` into this histogram.

        Raises:
            ValueError: the histograms differ in ``precision_bits`` or size.
        """
        if other._bits != self._bits or len(other._counts) != len(self._counts):
            raise ValueError("cannot merge histograms of different precision or range")
        if other.count == 0:
            return
        counts = self._counts
        for index, n in enumerate(other._counts):
            if n:
                counts[index] += n
        if self.count == 0 or other.min < self.min:
            self.min = other.min
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able, sparse snapshot: ``{"precision_bits", "max_value", "count",
        "total", "min", "max", "counts": {"<bucket index>": n, ...}}``."""
        return {
            "precision_bits": self._bits,
            "max_value": self.bucket_range(len(self._counts) - 1)[1],
            "count": self.count,
            "total": self.total,
            "min": self.min,
            "max": self.max,
            "counts": {str(i): n for i, n in enumerate(self._counts) if n},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Histogram:
        """Rebuild a histogram from :meth:`to_dict` output.

        Raises:
            ValueError: the snapshot is malformed (a bucket out of range, a negative count).
        """
        hist = cls(precision_bits=int(data["precision_bits"]), max_value=int(data["max_value"]))
        counts = hist._counts
        for key, n in dict(data["counts"]).items():
            index, n = int(key), int(n)
            if not 0 <= index < len(counts) or n < 0:
                raise ValueError(f"bad histogram bucket {key!r}: {n}")
            counts[index] += n
        hist.count = int(data["count"])
        hist.total = int(data["total"])
        hist.min = int(data["min"])
        hist.max = int(data["max"])
        if hist.count != sum(counts):
            raise ValueError("histogram snapshot count does not match its buckets")
        return hist

    def __repr__(self) -> str:
        return (
            f"Histogram(count={self.count}, min={self.min}, "
            f"p50={self.percentile(50)}, max={self.max})"
        )
