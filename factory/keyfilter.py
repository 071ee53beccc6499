"""The request keys a run has committed, in a fixed amount of memory: a Bloom filter.

A teacher with nothing in the cache before the run skips the cache look-up of each request, except for
keys the run itself committed since (an earlier seed's request asked again). Asking "may this key have been
committed?" of a set would keep every key of the run; this filter answers in 8 MiB however long the run.
It never says no to a key that was added, so no answer is paid for twice; a wrong yes only costs a look-up
that finds nothing. Up to about 5 million keys fewer than 1 in 200 answers are wrong; past that the share
grows, and a very long run looks most of its requests up, as a teacher with cached answers always does.

The keys are BLAKE2b digests in hex (factory.keys): their bits are already uniform, so the filter's bit
positions are taken from the key's own bits, four 26-bit slices of it, without hashing again.
"""

from __future__ import annotations

from collections.abc import Iterable

BITS = 26  # 2**26 bits: 8 MiB
PROBES = 4


class KeyFilter:
    __slots__ = ("_bits", "_mask", "added")

    def __init__(self, bits: int = BITS) -> None:
        self._bits = bytearray(1 << (bits - 3))
        self._mask = (1 << bits) - 1
        self.added = 0

    def _positions(self, key: str) -> list[int]:
        v, mask = int(key, 16), self._mask
        return [(v >> (32 * i)) & mask for i in range(PROBES)]

    def add(self, key: str) -> None:
        bits = self._bits
        for p in self._positions(key):
            bits[p >> 3] |= 1 << (p & 7)
        self.added += 1

    def update(self, keys: Iterable[str]) -> None:
        for k in keys:
            self.add(k)

    def __contains__(self, key: str) -> bool:
        """Asked of every request of a run: the probes written out, no list or generator per call."""
        if not self.added:
            return False
        bits, mask, v = self._bits, self._mask, int(key, 16)
        for _ in range(PROBES):
            p = v & mask
            if not bits[p >> 3] >> (p & 7) & 1:
                return False
            v >>= 32
        return True
