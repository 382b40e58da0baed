"""safetensors files exchanged with PyTorch (the optional `train` extra): bfloat16 as torch
rounds, writes and reads it. Skipped without torch; tests/test_tensorfile.py checks the same
layout from the format's definition."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from cogcore.dtypes import f32, to_bf16  # noqa: E402
from cogcore.tensorfile import read_safetensors, write_safetensors  # noqa: E402


def test_bf16_rounding_matches_torch(rng):
    x = np.concatenate([rng.standard_normal(2000).astype(np.float32) * 10.0 ** rng.integers(-8, 8, 2000),
                        np.array([0.0, -0.0, 1.0, np.inf, -np.inf, 3.4e38, 1e-40], np.float32),
                        np.array([0x3F808000, 0x3F818000, 0xBF808000], np.uint32).view(np.float32)])
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(to_bf16(x), want)
    back = torch.from_numpy(want.view(np.int16)).view(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(f32(want), back)


def test_bf16_written_by_torch_is_read(tmp_path, rng):
    t = torch.from_numpy(rng.standard_normal((3, 6)).astype(np.float32)).to(torch.bfloat16)
    path = str(tmp_path / "bf.safetensors")
    safetensors_torch.save_file({"b": t}, path)
    got, _ = read_safetensors(path)
    assert got["b"].dtype == np.uint16
    np.testing.assert_array_equal(f32(got["b"]), t.float().numpy())


def test_our_bf16_is_read_by_torch(tmp_path, rng):
    w = rng.standard_normal((4, 7)).astype(np.float32)
    path = str(tmp_path / "ours.safetensors")
    write_safetensors(path, {"b": to_bf16(w)})
    t = safetensors_torch.load_file(path)["b"]
    assert t.dtype == torch.bfloat16
    np.testing.assert_array_equal(t.float().numpy(), f32(to_bf16(w)))
