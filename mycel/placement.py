"""Key placement by rendezvous (highest random weight) hashing.

Every member scores every key; the ``n`` best-scoring members hold the key and the
best one is its primary. Adding a member moves only the keys it now wins; removing
one moves only the keys it held. Hashes are stable across processes, machines and
Python versions: BLAKE2b for keys and member ids, then pure 64-bit integer mixing
of ``key_hash ^ member_hash`` for the score: multiply, xor-shift, multiply (the
constants of splitmix64), of which the high bits decide the ranking.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from functools import lru_cache

__all__ = ["Placement", "key_hash", "member_hash", "score"]

_MASK = (1 << 64) - 1
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_KEY_PERSON = b"mycel.key"
_MEMBER_PERSON = b"mycel.member"


@lru_cache(maxsize=4096)
def _bucket_prefix(bucket: str) -> bytes:
    raw = bucket.encode("utf-8")
    return len(raw).to_bytes(4, "big") + raw


def key_hash(bucket: str, key: str) -> int:
    """Stable 64-bit hash of ``(bucket, key)``.

    The bucket is length-prefixed, so ``("ab", "c")`` and ``("a", "bc")`` hash differently.
    """
    digest = hashlib.blake2b(
        _bucket_prefix(bucket) + key.encode("utf-8"), digest_size=8, person=_KEY_PERSON
    ).digest()
    return int.from_bytes(digest, "big")


def member_hash(node_id: str) -> int:
    """Stable 64-bit hash of a member id."""
    digest = hashlib.blake2b(
        node_id.encode("utf-8"), digest_size=8, person=_MEMBER_PERSON
    ).digest()
    return int.from_bytes(digest, "big")


def score(h: int, m: int) -> int:
    """The rendezvous score of key hash ``h`` on member hash ``m``, a 64-bit int."""
    z = ((h ^ m) * _MIX1) & _MASK
    return ((z ^ (z >> 32)) * _MIX2) & _MASK


class Placement:
    """An immutable member set that maps keys to ordered replica lists."""

    __slots__ = ("members", "_hashed", "_hash")

    def __init__(self, members: Iterable[str]) -> None:
        names = sorted(set(members))
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"member ids must be str, not {type(name).__name__}")
        self.members: tuple[str, ...] = tuple(names)
        self._hashed: tuple[tuple[int, str], ...] = tuple((member_hash(n), n) for n in names)
        self._hash = hash(self.members)

    def replicas(self, bucket: str, key: str, n: int) -> list[str]:
        """The ``min(n, len(members))`` members holding ``(bucket, key)``, primary first."""
        return self.replicas_for_hash(key_hash(bucket, key), n)

    def replicas_for_hash(self, h: int, n: int) -> list[str]:
        """Like :meth:`replicas`, for a precomputed :func:`key_hash`."""
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n!r}")
        mask, mix1, mix2 = _MASK, _MIX1, _MIX2
        # Inlined score(): this runs on every remote operation.
        scored: list[tuple[int, str]] = []
        append = scored.append
        for m, name in self._hashed:
            z = ((h ^ m) * mix1) & mask
            append((((z ^ (z >> 32)) * mix2) & mask, name))
        if n == 1:
            return [max(scored)[1]] if scored else []
        scored.sort(reverse=True)
        return [name for _, name in scored[:n]]

    def primary(self, bucket: str, key: str) -> str:
        """The member that holds ``(bucket, key)`` first; LookupError if there are no members."""
        if not self._hashed:
            raise LookupError("placement has no members")
        return self.replicas_for_hash(key_hash(bucket, key), 1)[0]

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.members

    def __iter__(self) -> Iterator[str]:
        return iter(self.members)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Placement):
            return self.members == other.members
        return NotImplemented

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"Placement({list(self.members)!r})"
