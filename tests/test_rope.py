"""RoPE against the complex rotation and the rotate-half formula (SPEC 4.1)."""

import numpy as np
import pytest

from cogcore.blocks.rope import inv_freq, rope

import naive


def test_rope_is_complex_rotation(rng):
    hd, theta = 10, 500.0
    u = rng.standard_normal((6, 3, hd)).astype(np.float32)
    positions = np.array([0, 1, 2, 7, 100, 12345])
    got = rope(u, positions, inv_freq(hd, theta))
    for t, p in enumerate(positions):
        for h in range(3):
            np.testing.assert_allclose(got[t, h], naive.rope_head(u[t, h].astype(np.float64), p, theta),
                                       rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[0], u[0])                        # position 0 is the identity


def test_rope_matches_rotate_half_formula(rng):
    hd, theta = 8, 10000.0
    u = rng.standard_normal((1, 1, hd)).astype(np.float64)
    p = 37
    inv = np.array([theta ** (-2 * j / hd) for j in range(hd // 2)])
    cos, sin = np.cos(np.concatenate([p * inv, p * inv])), np.sin(np.concatenate([p * inv, p * inv]))
    a, b = u[0, 0, :hd // 2], u[0, 0, hd // 2:]
    want = u[0, 0] * cos + np.concatenate([-b, a]) * sin
    got = rope(u.astype(np.float32), np.array([p]), inv_freq(hd, theta))[0, 0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_rope_relative_position_property(rng):
    hd, theta = 16, 10000.0
    q = rng.standard_normal((1, 1, hd)).astype(np.float32)
    k = rng.standard_normal((1, 1, hd)).astype(np.float32)

    freqs = inv_freq(hd, theta)

    def dot(p, pk):
        return float(np.dot(rope(q, np.array([p]), freqs)[0, 0], rope(k, np.array([pk]), freqs)[0, 0]))

    for delta in (0, 3, 17):
        ref = dot(delta, 0)
        for base in (5, 250, 4096):
            assert dot(base + delta, base) == pytest.approx(ref, rel=1e-4, abs=1e-4)
    assert abs(dot(3, 0) - dot(0, 3)) > 1e-3        # sign of the offset matters (not symmetric)


def test_rope_preserves_norm_and_is_precise_at_large_positions(rng):
    hd = 12
    u = rng.standard_normal((3, 2, hd)).astype(np.float32)
    pos = np.array([100_000, 131_071, 1_000_003])
    got = rope(u, pos, inv_freq(hd, 10000.0))
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), np.linalg.norm(u, axis=-1), rtol=1e-5)
    for t, p in enumerate(pos):
        for h in range(2):
            # float64 angles: the error is float32 round-off, not position-sized
            np.testing.assert_allclose(got[t, h], naive.rope_head(u[t, h].astype(np.float64), int(p), 10000.0),
                                       atol=2e-6 * np.abs(u[t, h]).max() * 4)
