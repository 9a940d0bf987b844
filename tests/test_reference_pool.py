"""ReferencePool: RCR snapshots, draw strategies, the reservoir bound, in-place swapping,
and checkpoint round trips; plus a real peft LoRA on the tiny UNet."""

import io
import os
from collections import Counter

import pytest
import torch
from torch import nn

import sspo_utils
from sspo_utils import ReferencePool, SSPOInputError


def make_linear(seed=0, in_features=3, out_features=2):
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features)


def trainable(module):
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


def clone_params(module):
    return [p.detach().clone() for p in module.parameters()]


def set_params(module, value):
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(float(value))


def perturb_(params, seed=1, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


# ---------------------------------------------------------------------------
# snapshots and strategies
# ---------------------------------------------------------------------------


def test_snapshot_zero_is_a_copy_of_the_initial_weights():
    lin = make_linear()
    initial = clone_params(lin)
    pool = ReferencePool(trainable(lin))
    assert len(pool) == 1
    assert pool.steps == [0]
    assert pool.names == ["weight", "bias"]
    perturb_(list(lin.parameters()))
    assert not torch.equal(lin.weight, initial[0])
    for snap, init in zip(pool.snapshots[0], initial):
        assert torch.equal(snap, init)
        assert not snap.requires_grad
    assert pool.nbytes_per_snapshot() == (2 * 3 + 2) * 4


def test_add_appends_current_weights_when_unbounded():
    lin = make_linear()
    pool = ReferencePool(trainable(lin))
    for step in (5, 10, 15):
        set_params(lin, step)
        assert pool.add(step) == len(pool) - 1
    assert len(pool) == 4
    assert pool.steps == [0, 5, 10, 15]
    for slot, step in enumerate(pool.steps[1:], start=1):
        for t in pool.snapshots[slot]:
            assert (t == step).all()


def test_empty_parameter_list_raises():
    with pytest.raises(ValueError):
        ReferencePool([])


def test_uniform_draws_cover_all_indices_and_are_reproducible():
    lin = make_linear()
    pool = ReferencePool(trainable(lin))
    for step in range(1, 5):
        pool.add(step)
    n = len(pool)
    assert n == 5
    g = torch.Generator().manual_seed(1234)
    draws = [pool.sample("uniform", generator=g) for _ in range(5000)]
    counts = Counter(draws)
    assert set(counts) == set(range(n))
    for i in range(n):
        # expected 1000 each, sd ~ 28
        assert 850 <= counts[i] <= 1150, counts
    g1 = torch.Generator().manual_seed(7)
    g2 = torch.Generator().manual_seed(7)
    a = [pool.sample("uniform", generator=g1) for _ in range(200)]
    b = [pool.sample("uniform", generator=g2) for _ in range(200)]
    assert a == b
    g3 = torch.Generator().manual_seed(8)
    assert a != [pool.sample("uniform", generator=g3) for _ in range(200)]


def test_latest_and_initial_strategies():
    lin = make_linear()
    pool = ReferencePool(trainable(lin))
    assert pool.sample("latest") == 0
    assert pool.sample("initial") == 0
    for step in (3, 6, 9):
        pool.add(step)
    assert pool.sample("latest") == 3
    assert pool.sample("initial") == 0


def test_latest_is_the_most_recent_step_in_a_bounded_pool():
    lin = make_linear()
    pool = ReferencePool(trainable(lin), max_snapshots=3, seed=0)
    for step in range(1, 40):
        pool.add(step)
        latest = pool.sample("latest")
        assert pool.steps[latest] == max(pool.steps)
        assert pool.sample("initial") == 0


def test_unknown_strategy_raises():
    pool = ReferencePool(trainable(make_linear()))
    with pytest.raises(ValueError):
        pool.sample("random")


# ---------------------------------------------------------------------------
# reservoir bound
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, 1])
def test_max_snapshots_below_two_raises(bad):
    with pytest.raises(sspo_utils.SSPOInputError):
        ReferencePool(trainable(make_linear()), max_snapshots=bad)


def test_max_snapshots_two_is_accepted():
    lin = make_linear()
    pool = ReferencePool(trainable(lin), max_snapshots=2)
    for step in range(1, 10):
        pool.add(step)
    assert len(pool) == 2
    assert pool.steps[0] == 0


def test_reservoir_bounds_the_pool_and_keeps_the_initial_model():
    lin = make_linear()
    initial = clone_params(lin)
    k = 4
    pool = ReferencePool(trainable(lin), max_snapshots=k, seed=3)
    slots = []
    for step in range(1, 101):
        set_params(lin, step)
        slot = pool.add(step)
        slots.append(slot)
        assert len(pool) == min(k, step + 1)
        assert pool.steps[0] == 0
        for snap, init in zip(pool.snapshots[0], initial):
            assert torch.equal(snap, init)
    assert len(pool) == k
    assert pool.num_offered == 100
    # the first K-1 offers fill the pool; later ones are either rejected or land in 1..K-1
    assert slots[: k - 1] == [1, 2, 3]
    assert all(s is None or 1 <= s < k for s in slots[k - 1:])
    assert None in slots and any(s is not None for s in slots[k - 1:])
    # each kept snapshot holds the weights of the step it is labelled with
    assert len(set(pool.steps)) == k
    for slot in range(1, k):
        for t in pool.snapshots[slot]:
            assert (t == pool.steps[slot]).all()


def test_reservoir_keeps_every_historical_snapshot_with_equal_probability():
    # With K slots (K-1 besides the initial model) and N offers, algorithm R keeps each
    # offered snapshot with probability (K-1)/N, whatever its position in the history.
    k, n_offers, n_seeds = 4, 12, 2000
    param = nn.Parameter(torch.zeros(1))
    kept = Counter()
    for seed in range(n_seeds):
        pool = ReferencePool([("w", param)], max_snapshots=k, seed=seed)
        for step in range(1, n_offers + 1):
            pool.add(step)
        assert len(pool) == k and pool.steps[0] == 0
        kept.update(pool.steps[1:])
    expected = n_seeds * (k - 1) / n_offers  # 500; sd ~ 19
    assert sum(kept.values()) == n_seeds * (k - 1)
    for step in range(1, n_offers + 1):
        assert abs(kept[step] - expected) < 0.2 * expected, (step, kept)


def test_reservoir_is_seeded():
    param = nn.Parameter(torch.zeros(1))

    def history(seed):
        pool = ReferencePool([("w", param)], max_snapshots=3, seed=seed)
        return [pool.add(step) for step in range(1, 30)], pool.steps

    assert history(5) == history(5)
    assert history(5) != history(6)


# ---------------------------------------------------------------------------
# swapped_in
# ---------------------------------------------------------------------------


def test_swapped_in_uses_the_snapshot_and_restores_live_weights():
    lin = make_linear()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out_initial = lin(x)
    pool = ReferencePool(trainable(lin))
    perturb_(list(lin.parameters()))
    live = clone_params(lin)
    param_ids = [id(p) for p in lin.parameters()]
    with torch.no_grad():
        out_live = lin(x)
    assert not torch.allclose(out_live, out_initial)

    with pool.swapped_in(0) as same_pool:
        assert same_pool is pool
        with torch.no_grad():
            assert torch.equal(lin(x), out_initial)
        assert torch.equal(lin.weight, pool.snapshots[0][0])

    assert [id(p) for p in lin.parameters()] == param_ids
    for p, saved in zip(lin.parameters(), live):
        assert torch.equal(p, saved)
        assert p.requires_grad
    with torch.no_grad():
        assert torch.equal(lin(x), out_live)


def test_swapped_in_picks_the_requested_snapshot():
    lin = make_linear()
    pool = ReferencePool(trainable(lin))
    for step in (1, 2, 3):
        set_params(lin, step * 10)
        pool.add(step)
    set_params(lin, -1)
    for index in range(len(pool)):
        with pool.swapped_in(index):
            assert torch.equal(lin.weight, pool.snapshots[index][0])
            assert torch.equal(lin.bias, pool.snapshots[index][1])
        assert (lin.weight == -1).all() and (lin.bias == -1).all()


def test_swapped_in_restores_live_weights_when_the_block_raises():
    lin = make_linear()
    pool = ReferencePool(trainable(lin))
    perturb_(list(lin.parameters()))
    live = clone_params(lin)
    with pytest.raises(RuntimeError, match="boom"):
        with pool.swapped_in(0):
            assert not torch.equal(lin.weight, live[0])
            raise RuntimeError("boom")
    for p, saved in zip(lin.parameters(), live):
        assert torch.equal(p, saved)


def test_swapped_in_does_not_change_snapshots_and_allows_training_after():
    lin = make_linear()
    pool = ReferencePool(trainable(lin))
    snap0 = [t.clone() for t in pool.snapshots[0]]
    perturb_(list(lin.parameters()))
    x = torch.randn(4, 3)
    with pool.swapped_in(0):
        with torch.no_grad():
            ref_out = lin(x)
    for a, b in zip(pool.snapshots[0], snap0):
        assert torch.equal(a, b)
    # the policy forward after the block must be differentiable as usual
    loss = (lin(x) - ref_out).pow(2).mean()
    loss.backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()
    # repeated use reuses the backup buffers and still restores exactly
    live = clone_params(lin)
    for _ in range(3):
        with pool.swapped_in(0):
            pass
    for p, saved in zip(lin.parameters(), live):
        assert torch.equal(p, saved)


# ---------------------------------------------------------------------------
# state_dict round trip
# ---------------------------------------------------------------------------


def _filled_pool(seed=11):
    lin = make_linear()
    pool = ReferencePool(trainable(lin), max_snapshots=3, seed=seed)
    for step in range(1, 8):
        perturb_(list(lin.parameters()), seed=step)
        pool.add(step)
    return lin, pool


def test_state_dict_round_trip_gives_identical_pool_and_future_decisions():
    lin, pool = _filled_pool()
    buffer = io.BytesIO()
    torch.save(pool.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    other_lin = make_linear(seed=99)  # a fresh model with other live values
    fresh = ReferencePool(trainable(other_lin), max_snapshots=3, seed=12345)
    fresh.load_state_dict(state)

    assert len(fresh) == len(pool)
    assert fresh.steps == pool.steps
    assert fresh.num_offered == pool.num_offered == 7
    for snap_a, snap_b in zip(pool.snapshots, fresh.snapshots):
        for a, b in zip(snap_a, snap_b):
            assert torch.equal(a, b)
            assert a.dtype == b.dtype

    # identical reservoir decisions afterwards
    decisions_a, decisions_b = [], []
    for step in range(8, 60):
        decisions_a.append(pool.add(step))
        decisions_b.append(fresh.add(step))
    assert decisions_a == decisions_b
    assert pool.steps == fresh.steps
    assert any(d is None for d in decisions_a) and any(d is not None for d in decisions_a)

    # the loaded snapshot 0 is the original run's initial model, swapped into the new module
    with fresh.swapped_in(0):
        assert torch.equal(other_lin.weight, pool.snapshots[0][0])


def test_load_state_dict_rejects_mismatched_shapes():
    _, pool = _filled_pool()
    state = pool.state_dict()
    wider = make_linear(in_features=3, out_features=4)  # same names, other shapes
    other = ReferencePool(trainable(wider), max_snapshots=3)
    with pytest.raises(sspo_utils.SSPOInputError):
        other.load_state_dict(state)
    # a failed load leaves the pool untouched
    assert other.steps == [0]
    assert other.snapshots[0][0].shape == (4, 3)


def test_load_state_dict_rejects_other_parameter_names():
    _, pool = _filled_pool()
    state = pool.state_dict()
    lin = make_linear()
    renamed = ReferencePool([("w", lin.weight), ("b", lin.bias)], max_snapshots=3)
    with pytest.raises(sspo_utils.SSPOInputError):
        renamed.load_state_dict(state)


# ---------------------------------------------------------------------------
# a real peft LoRA on the tiny UNet
# ---------------------------------------------------------------------------


def test_lora_unet_snapshot_zero_equals_adapters_disabled(tiny_model_dir):
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_pretrained(os.path.join(tiny_model_dir, "unet"))
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                   target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    unet.eval()
    named = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    assert named and all("lora" in n for n, _ in named)
    pool = ReferencePool(named)

    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    hidden = torch.randn(2, 7, unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([10, 500])

    def forward():
        with torch.no_grad():
            return unet(sample, t, encoder_hidden_states=hidden).sample

    unet.disable_adapters()
    out_base = forward()
    unet.enable_adapters()
    # a gaussian-init LoRA starts as the identity (B = 0)
    assert torch.allclose(forward(), out_base, atol=1e-6)

    perturb_([p for _, p in named], seed=2, scale=0.3)
    live = [p.detach().clone() for _, p in named]
    out_perturbed = forward()
    assert not torch.allclose(out_perturbed, out_base, atol=1e-4)

    with pool.swapped_in(0):
        out_swapped = forward()
    assert torch.equal(out_swapped, out_base)
    for (_, p), saved in zip(named, live):
        assert torch.equal(p, saved)
    assert torch.equal(forward(), out_perturbed)


def test_swapped_in_is_not_reentrant_and_keeps_live_weights():
    param = torch.nn.Parameter(torch.zeros(2))
    pool = ReferencePool([("w", param)])
    param.data.fill_(1.0)
    pool.add(step=1)
    param.data.fill_(2.0)
    with pool.swapped_in(0):
        with pytest.raises(RuntimeError, match="re-entrant"):
            with pool.swapped_in(1):
                pass
    assert torch.equal(param.detach(), torch.full((2,), 2.0))
    with pool.swapped_in(1):  # usable again after the outer block
        assert torch.equal(param.detach(), torch.ones(2))


def test_load_state_dict_refuses_pool_larger_than_max_snapshots():
    param = torch.nn.Parameter(torch.zeros(2))
    big = ReferencePool([("w", param)])
    for step in range(1, 4):
        big.add(step)
    small = ReferencePool([("w", param)], max_snapshots=2)
    with pytest.raises(SSPOInputError, match="--max_snapshots"):
        small.load_state_dict(big.state_dict())
