"""Named random streams derived from ``base.seed``.

A stage never seeds two unrelated things with the same number: each use of randomness is a *stream*
with a name (``"generator-init"``, ``"downstream"``, ``"instrument-fold"`` ...) and optional integer
keys (a generation, a fold), and its seed is

    ``stream_seed(seed, name, *keys) = SeedSequence([seed, crc32(name), *keys]).generate_state(2)`` as one 63-bit int

(NumPy's ``SeedSequence`` hashes its entropy, so neighbouring inputs give unrelated seeds: unlike
``seed + generation``, base seed 1 at generation 0 does not replay base seed 0 at generation 1).
Which streams are shared between variants and generations is listed in :mod:`biasloop.loop.training`.
"""

from __future__ import annotations

import zlib

import numpy as np


def stream_seed(seed: int, stream: str, *keys: int) -> int:
    """The seed of one named random stream.

    Args:
        seed: the master seed (``base.seed``), a non-negative integer.
        stream: the stream's name; different names give unrelated seeds.
        keys: further non-negative integers (generation, fold) that split the stream.

    Returns:
        An integer in ``[0, 2**63)``, valid for ``torch.manual_seed``, ``torch.Generator.manual_seed``
        and ``numpy.random.default_rng``; the same inputs give the same seed on every machine.
    """
    if seed < 0 or any(k < 0 for k in keys):
        raise ValueError(f"stream_seed: seed and keys must be non-negative, got {seed}, {keys}")
    words = np.random.SeedSequence([int(seed), zlib.crc32(stream.encode()), *map(int, keys)]).generate_state(2)
    return int((int(words[0]) << 32 | int(words[1])) & (2**63 - 1))
