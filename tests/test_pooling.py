"""PromptGuidedPooling: window arithmetic, hand-computed values, padding policies, save/load; UniformDrop."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ppllava_hermes.pooling import (
    IMAGE_KERNEL,
    PoolingConfig,
    PromptGuidedPooling,
    UniformDrop,
    average_pool,
)


def one_hot_features(grid: tuple[int, int, int], batch: int = 1) -> torch.Tensor:
    """(batch, T, H, W, T*H*W): token i's feature is e_i, so a pooled feature reads out its weights."""
    n = math.prod(grid)
    return torch.eye(n).view(1, *grid, n).expand(batch, -1, -1, -1, -1).clone()


# --- identity and sizes -----------------------------------------------------------------------


def test_kernel_one_is_exact_identity():
    x = torch.randn(2, 3, 5, 7, 4)
    pool = PromptGuidedPooling(PoolingConfig(kernel=(1, 1, 1)))
    out = pool(x, torch.rand(2, 3, 5, 7))
    assert out.features is x  # returned as is: bitwise equal by construction
    assert torch.equal(out.features, x)
    assert out.grid == (3, 5, 7)
    assert torch.equal(out.source_index[0].flatten(), torch.arange(3 * 5 * 7))
    flat = x.flatten(1, 3)
    out_flat = pool(flat, grid=(3, 5, 7))
    assert torch.equal(out_flat.features, x) and out_flat.features.data_ptr() == flat.data_ptr()


def test_target_equal_to_grid_is_identity():
    x = torch.randn(1, 4, 6, 6, 3)
    out = PromptGuidedPooling(PoolingConfig(target=(4, 6, 6)))(x)
    assert out.features is x


@pytest.mark.parametrize(
    "grid, kernel, stride, expected",
    [
        ((32, 24, 24), (2, 3, 3), None, (16, 8, 8)),
        ((1, 27, 27), (1, 3, 3), None, (1, 9, 9)),
        ((8, 12, 12), (2, 2, 2), (1, 2, 2), (7, 6, 6)),
        ((5, 9, 7), (1, 3, 3), (1, 2, 2), (5, 4, 3)),
        ((6, 6, 6), (3, 3, 3), (1, 1, 1), (4, 4, 4)),
        ((4, 16, 16), (4, 4, 4), (2, 4, 4), (1, 4, 4)),
    ],
)
def test_output_size_follows_formula(grid, kernel, stride, expected):
    pool = PromptGuidedPooling(PoolingConfig(kernel=kernel, stride=stride))
    x = torch.randn(1, *grid, 2)
    out = pool(x, torch.rand(1, *grid))
    stride = stride or kernel
    formula = tuple((i - k) // s + 1 for i, k, s in zip(grid, kernel, stride, strict=True))
    assert out.grid == expected == formula == pool.output_grid(grid)
    assert out.features.shape == (1, *expected, 2)
    assert out.window_weights.shape == (1, *expected, math.prod(kernel))


def test_reference_kernel_reduces_tokens_by_more_than_80_percent():
    grid = (32, 24, 24)
    out = PromptGuidedPooling()(torch.randn(1, *grid, 4), torch.rand(1, *grid).softmax(-1))
    n_in, n_out = math.prod(grid), math.prod(out.grid)
    assert (n_in, out.grid, n_out) == (18432, (16, 8, 8), 1024)
    assert 1 - n_out / n_in >= 0.80  # 94.4 %, 18x
    assert out.tokens.shape == (1, 1024, 4)


@settings(max_examples=25, deadline=None)
@given(
    grid=st.tuples(st.integers(1, 6), st.integers(1, 8), st.integers(1, 8)),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
    data=st.data(),
)
def test_no_query_mode_is_average_pooling(grid, kernel, data):
    if any(k > i for k, i in zip(kernel, grid, strict=True)):
        kernel = tuple(min(k, i) for k, i in zip(kernel, grid, strict=True))
    stride = tuple(data.draw(st.integers(1, k)) for k in kernel)
    x = torch.randn(2, *grid, 3)
    out = PromptGuidedPooling(PoolingConfig(kernel=kernel, stride=stride, padding="drop"))(x)
    torch.testing.assert_close(out.features, average_pool(x, kernel, stride), atol=1e-5, rtol=1e-5)


# --- hand-computed values ---------------------------------------------------------------------


def test_dominating_weight_selects_that_token():
    grid = (2, 3, 3)  # exactly one reference window
    x = torch.randn(1, *grid, 5)
    weights = torch.zeros(1, *grid)
    weights[0, 1, 2, 0] = 1.0  # one token clearly more relevant (tau = 0.01: logit gap 100)
    out = PromptGuidedPooling()(x, weights)
    assert out.grid == (1, 1, 1)
    torch.testing.assert_close(out.features[0, 0, 0, 0], x[0, 1, 2, 0], atol=1e-6, rtol=0)
    k = 1 * 9 + 2 * 3 + 0  # row-major position of (1, 2, 0) in the (2, 3, 3) window
    assert out.window_weights[0, 0, 0, 0, k] > 0.999999
    assert out.source_index[0, 0, 0, 0] == 1 * 9 + 2 * 3 + 0


def test_weighted_sum_by_hand():
    grid = (2, 3, 3)
    x = one_hot_features(grid)
    weights = torch.zeros(1, *grid)
    weights[0, 0, 1, 1] = math.log(3.0)  # with tau = 1: exp = 3 against 1 for the 17 others
    out = PromptGuidedPooling(PoolingConfig(tau=1.0))(x, weights)
    expected = torch.full((18,), 1 / 20)
    expected[4] = 3 / 20
    torch.testing.assert_close(out.features[0, 0, 0, 0], expected, atol=1e-6, rtol=0)


def test_each_window_uses_its_own_softmax():
    grid = (2, 6, 3)  # two windows along H
    x = one_hot_features(grid, batch=2)
    weights = torch.rand(2, *grid)
    out = PromptGuidedPooling(PoolingConfig(tau=0.5))(x, weights)
    for b in range(2):
        for hw in range(2):
            block = weights[b, :, 3 * hw : 3 * hw + 3, :]
            probs = (block / 0.5).flatten().softmax(0)
            index = torch.arange(math.prod(grid)).view(grid)[:, 3 * hw : 3 * hw + 3, :].flatten()
            expected = torch.zeros(math.prod(grid)).index_put_((index,), probs)
            torch.testing.assert_close(out.features[b, 0, hw, 0], expected, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(out.window_weights[b, 0, hw, 0], probs, atol=1e-6, rtol=1e-5)


def test_flat_tokens_and_flat_weights_match_grid_form():
    grid = (4, 6, 6)
    x, w = torch.randn(2, *grid, 3), torch.rand(2, *grid)
    pool = PromptGuidedPooling()
    a = pool(x, w)
    b = pool(x.flatten(1, 3), w.flatten(1), grid=grid)
    torch.testing.assert_close(a.features, b.features, atol=0, rtol=0)


def test_image_kernel_keeps_frames():
    out = PromptGuidedPooling(PoolingConfig.for_images())(torch.randn(1, 1, 27, 27, 2))
    assert PoolingConfig.for_images().kernel == IMAGE_KERNEL == (1, 3, 3)
    assert out.grid == (1, 9, 9)


# --- target-size mode -------------------------------------------------------------------------


def test_target_mode_matches_equivalent_kernel():
    grid = (32, 24, 24)
    x, w = torch.randn(1, *grid, 3), torch.rand(1, *grid)
    by_target = PromptGuidedPooling(PoolingConfig(target=(16, 8, 8)))(x, w)
    by_kernel = PromptGuidedPooling(PoolingConfig(kernel=(2, 3, 3)))(x, w)
    assert by_target.kernel == (2, 3, 3) and by_target.stride == (2, 3, 3)
    torch.testing.assert_close(by_target.features, by_kernel.features, atol=0, rtol=0)


@pytest.mark.parametrize(
    "grid, target", [((9, 24, 23), (4, 7, 5)), ((7, 10, 10), (3, 4, 10)), ((5, 5, 5), (1, 1, 1))]
)
def test_target_mode_reaches_target_and_covers_every_token(grid, target):
    pool = PromptGuidedPooling(PoolingConfig(target=target))
    x = one_hot_features(grid)
    out = pool(x)
    assert out.grid == target
    kernel, stride = out.kernel, out.stride
    for axis in range(3):  # the last window ends at the last token
        assert (target[axis] - 1) * stride[axis] + kernel[axis] == grid[axis]
    covered = out.features.flatten(0, 3).sum(0) > 0  # every input token gets weight somewhere
    assert bool(covered.all())


def test_target_larger_than_grid_is_an_error():
    with pytest.raises(ValueError, match=r"larger than the input grid"):
        PromptGuidedPooling(PoolingConfig(target=(4, 8, 8)))(torch.randn(1, 2, 8, 8, 1))


# --- grids the kernel does not fit ------------------------------------------------------------


def test_grid_that_does_not_fit_raises_a_clear_error():
    pool = PromptGuidedPooling()  # padding="error" by default
    with pytest.raises(ValueError) as err:
        pool(torch.randn(1, 5, 24, 24, 2))
    message = str(err.value)
    assert "(5, 24, 24)" in message and "(2, 3, 3)" in message and "axis T" in message
    with pytest.raises(ValueError, match=r"fewer than the kernel"):
        pool(torch.randn(1, 1, 24, 24, 2))


def test_padding_drop_ignores_trailing_tokens():
    x = torch.randn(1, 5, 7, 6, 2)
    out = PromptGuidedPooling(PoolingConfig(padding="drop"))(x)
    assert out.grid == (2, 2, 2)
    torch.testing.assert_close(out.features, average_pool(x[:, :4, :6, :6]), atol=1e-6, rtol=1e-5)


def test_padding_replicate_repeats_edge_tokens():
    x = torch.randn(1, 3, 4, 3, 2)
    out = PromptGuidedPooling(PoolingConfig(padding="replicate"))(x)
    assert out.grid == (2, 2, 1)
    padded = torch.cat([x, x[:, -1:]], dim=1)  # T 3 -> 4
    padded = torch.cat([padded, padded[:, :, -1:], padded[:, :, -1:]], dim=2)  # H 4 -> 6
    torch.testing.assert_close(out.features, average_pool(padded), atol=1e-6, rtol=1e-5)


def test_padding_pad_averages_only_real_tokens():
    grid = (3, 4, 3)
    x = torch.randn(1, *grid, 2)
    weights = torch.rand(1, *grid)
    out = PromptGuidedPooling(PoolingConfig(padding="pad", tau=0.1))(x, weights)
    assert out.grid == (2, 2, 1)
    # last window along T and H holds the single real frame 2 and real rows 3..3
    real_x = x[0, 2:3, 3:4, 0:3].reshape(-1, 2)
    real_w = weights[0, 2:3, 3:4, 0:3].reshape(-1)
    expected = (real_w / 0.1).softmax(0) @ real_x
    torch.testing.assert_close(out.features[0, 1, 1, 0], expected, atol=1e-6, rtol=1e-5)
    assert int((out.window_weights[0, 1, 1, 0] > 0).sum()) == 3  # padded positions get zero weight
    assert int(out.source_index.max()) < math.prod(grid)


# --- config validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kernel": (2, 3, 3), "stride": (3, 3, 3)}, "larger than kernel"),
        ({"kernel": (2, 3, 3), "target": (4, 4, 4)}, "not both"),
        ({"kernel": (0, 3, 3)}, "positive"),
        ({"kernel": (2, 3)}, "three positive"),
        ({"tau": 0.0}, "tau"),
        ({"tau": float("nan")}, "tau"),
        ({"padding": "zeros"}, "padding"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PoolingConfig(**kwargs)


def test_reference_defaults():
    cfg = PoolingConfig()
    assert (cfg.kernel, cfg.stride, cfg.tau, cfg.padding) == ((2, 3, 3), (2, 3, 3), 0.01, "error")


def test_weights_shape_must_match_features():
    with pytest.raises(ValueError, match=r"weights must be"):
        PromptGuidedPooling()(torch.randn(1, 2, 3, 3, 4), torch.rand(1, 2, 3, 4))


# --- gradients and persistence ----------------------------------------------------------------


def test_gradients_reach_features_weights_and_learnable_tau():
    pool = PromptGuidedPooling(PoolingConfig(learn_tau=True))
    x = torch.randn(1, 2, 3, 3, 4, requires_grad=True)
    w = torch.rand(1, 2, 3, 3, requires_grad=True)
    pool(x, w).features.pow(2).sum().backward()
    assert x.grad is not None and w.grad is not None and w.grad.abs().sum() > 0
    assert pool.log_tau.grad is not None and pool.log_tau.grad != 0
    assert [n for n, _ in pool.named_parameters()] == ["log_tau"]
    assert not list(PromptGuidedPooling().parameters())  # off by default (ref)


@pytest.mark.parametrize("learn_tau", [False, True])
def test_save_and_load_round_trip(tmp_path, learn_tau):
    config = PoolingConfig(kernel=(1, 2, 2), stride=(1, 1, 2), tau=0.05, learn_tau=learn_tau, padding="pad")
    pool = PromptGuidedPooling(config)
    if learn_tau:
        with torch.no_grad():
            pool.log_tau.fill_(math.log(0.2))  # a "trained" value, different from config.tau
    pool.save_pretrained(tmp_path / "pool")
    assert {p.name for p in (tmp_path / "pool").iterdir()} == {"pooling_config.json", "pooling.safetensors"}
    loaded = PromptGuidedPooling.from_pretrained(tmp_path / "pool")
    assert loaded.config == pool.config
    for (ka, va), (kb, vb) in zip(pool.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    x, w = torch.randn(2, 3, 5, 5, 3), torch.rand(2, 3, 5, 5)
    torch.testing.assert_close(loaded(x, w).features, pool(x, w).features, atol=0, rtol=0)


def test_target_config_round_trips(tmp_path):
    pool = PromptGuidedPooling(PoolingConfig(target=(2, 4, 4)))
    pool.save_pretrained(tmp_path)
    loaded = PromptGuidedPooling.from_pretrained(tmp_path)
    assert loaded.config.target == (2, 4, 4) and loaded.config.kernel is None


# --- uniform dropping -------------------------------------------------------------------------


def test_uniform_drop_keeps_one_token_per_window_at_the_same_place():
    grid, kernel = (2, 4, 4), (1, 2, 2)
    x = one_hot_features(grid, batch=2)
    out = UniformDrop(kernel)(x)
    pooled = PromptGuidedPooling(PoolingConfig(kernel=kernel))(x)
    assert out.grid == pooled.grid == (2, 2, 2) and out.features.shape == pooled.features.shape
    # the centre (k // 2) of each window: token (t, 2h + 1, 2w + 1), an input token bit for bit
    expected = torch.tensor([[[(t * 4 + 2 * h + 1) * 4 + 2 * w + 1 for w in range(2)] for h in range(2)]
                             for t in range(2)])
    assert torch.equal(out.source_index, expected.expand(2, -1, -1, -1))
    assert torch.equal(out.tokens, x.flatten(1, 3)[:, expected.flatten()])
    assert torch.equal(out.window_weights.sum(-1), torch.ones(2, 2, 2, 2))
    assert torch.equal(out.window_weights.argmax(-1), torch.full((2, 2, 2, 2), 3))  # (0, 1, 1) in the window


def test_uniform_drop_offset_whole_frame_and_errors():
    x = torch.randn(1, 4, 4, 4, 3)
    out = UniformDrop((2, 4, 4), offset=(0, 0, 0))(x)
    assert out.grid == (2, 1, 1) and torch.equal(out.features, x[:, 0::2, :1, :1])
    flat = UniformDrop((1, 4, 4))(x.flatten(1, 3), grid=(4, 4, 4))
    assert flat.grid == (4, 1, 1) and torch.equal(flat.features[:, :, 0, 0], x[:, :, 2, 2])
    with pytest.raises(ValueError, match="does not fit"):
        UniformDrop((1, 3, 3))(x)
    with pytest.raises(ValueError, match="inside the kernel"):
        UniformDrop((1, 2, 2), offset=(0, 2, 0))
    with pytest.raises(ValueError, match="no relevance weights"):
        UniformDrop((1, 2, 2))(x, torch.rand(1, 4, 4, 4))
