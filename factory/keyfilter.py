"""The request keys a run has committed, in a fixed amount of memory: a Bloom filter.

A teacher with nothing in the cache before the run skips the cache look-up of each request, except for
keys the run itself committed since (an earlier seed's request asked again). Asking "may this key have been
committed?" of a set would keep every key of the run; this filter answers in 8 MiB however long the run.
It never says no to a key that was added, so no answer is paid for twice; a wrong yes only costs a look-up
that finds nothing. Up to about 5 million keys fewer than 1 in 200 answers are wrong; past that the share
grows, and a very long run looks most of its requests up, as a teacher with cached answers always does.

It is asked of every request and fed every committed key, so each key touches one 64-byte block (one cache
line: a probe spread over 8 MiB cost a cache miss per bit, several microseconds a key) and its four bits
lie in that block. Block and bits come from the key string's own hash, which Python computes once per
string and keeps (the runner has already hashed each key for its dict of requests in flight). The hash is
salted per process, which is all a filter that lives and dies with one run needs.
"""

from __future__ import annotations

from collections.abc import Iterable

BITS = 26  # 2**26 bits: 8 MiB
BLOCK = 9  # 2**9 bits a block: 64 bytes, one cache line
PROBES = 4  # bits a key sets in its block: 9 bits of the hash each, above the block number
_BIT = (1, 2, 4, 8, 16, 32, 64, 128)


class KeyFilter:
    __slots__ = ("_bits", "_blocks", "_shift", "added")

    def __init__(self, bits: int = BITS) -> None:
        if not BLOCK < bits <= 64 - PROBES * BLOCK + BLOCK:
            raise ValueError(f"bits must be between {BLOCK + 1} and {64 - (PROBES - 1) * BLOCK}")
        self._bits = bytearray(1 << (bits - 3))
        self._blocks = (1 << (bits - BLOCK)) - 1  # mask of the block number
        self._shift = bits - BLOCK  # the probes' bits start above the block number
        self.added = 0

    def add(self, key: str) -> None:
        self.update((key,))

    def update(self, keys: Iterable[str]) -> None:
        """Fed every key the run commits: the four bits set written out, the loop inside."""
        bits, blocks, shift, n = self._bits, self._blocks, self._shift, 0
        for key in keys:
            h = hash(key)
            base = (h & blocks) << 6
            h >>= shift
            p = h & 511
            bits[base + (p >> 3)] |= _BIT[p & 7]
            p = h >> 9 & 511
            bits[base + (p >> 3)] |= _BIT[p & 7]
            p = h >> 18 & 511
            bits[base + (p >> 3)] |= _BIT[p & 7]
            p = h >> 27 & 511
            bits[base + (p >> 3)] |= _BIT[p & 7]
            n += 1
        self.added += n

    def __contains__(self, key: str) -> bool:
        """Asked of every request of a run: the probes written out, no list or generator per call."""
        if not self.added:
            return False
        h = hash(key)
        bits, base = self._bits, (h & self._blocks) << 6
        h >>= self._shift
        p = h & 511
        if not bits[base + (p >> 3)] & _BIT[p & 7]:
            return False
        p = h >> 9 & 511
        if not bits[base + (p >> 3)] & _BIT[p & 7]:
            return False
        p = h >> 18 & 511
        if not bits[base + (p >> 3)] & _BIT[p & 7]:
            return False
        p = h >> 27 & 511
        return bool(bits[base + (p >> 3)] & _BIT[p & 7])
