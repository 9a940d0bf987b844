"""sspo_loss, dpo_loss and per_sample_error against values computed by hand from the
formulas (plain Python math, never the code under test).

    Δw = e_θ^w − e_ref^w,  Δs = e_θ^s − e_ref^s
    loss_i = −log σ(−β/2 · (Δw − I_i · Δs))
    sft: I = 1 if e_θ^w <= e_ref^w else 0;  flip: I = ±1;  off: I = 1
    self_sample: I = 0 if e_θ^s < e_ref^s else 1
"""

import math

import pytest
import torch

from sspo_utils import dpo_loss, per_sample_error, sspo_loss


def neg_log_sigmoid(x):
    # −log σ(x) = log(1 + e^{−x})
    return math.log(1.0 + math.exp(-x))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def hand_logit(mw, ms, rw, rs, beta, indicator):
    return -beta / 2.0 * ((mw - rw) - indicator * (ms - rs))


# A 4-sample batch (e_θ^w, e_θ^s, e_ref^w, e_ref^s) covering both sides of the SSR switch
# and a tie:
#   0: policy better on the winner (0.3 < 0.5)      -> sft I=1, flip +1
#   1: policy worse on the winner (0.7 > 0.5)       -> sft I=0, flip -1
#   2: tie (0.4 == 0.4)                             -> sft I=1, flip +1
#   3: policy worse on the winner (0.9 > 0.6)       -> sft I=0, flip -1
# self_sample looks at x^s instead: only sample 1 has e_θ^s < e_ref^s (0.2 < 0.3) -> I=0, others I=1
BATCH = [
    (0.3, 0.6, 0.5, 0.4),
    (0.7, 0.2, 0.5, 0.3),
    (0.4, 0.5, 0.4, 0.45),
    (0.9, 0.95, 0.6, 0.5),
]
HAND_INDICATOR = {"sft": [1.0, 0.0, 1.0, 0.0], "flip": [1.0, -1.0, 1.0, -1.0], "off": [1.0, 1.0, 1.0, 1.0],
                  "self_sample": [1.0, 0.0, 1.0, 1.0]}
# implicit accuracy: (e_θ^w − e_θ^s) < (e_ref^w − e_ref^s)
#   0: −0.3 < 0.1 yes; 1: 0.5 < 0.2 no; 2: −0.1 < −0.05 yes; 3: −0.05 < 0.1 yes
HAND_IMPLICIT_ACC = 0.75
BETA = 10.0


def batch_tensors(requires_grad=False, dtype=torch.float64):
    cols = list(zip(*BATCH))
    mw, ms, rw, rs = (torch.tensor(c, dtype=dtype) for c in cols)
    if requires_grad:
        mw.requires_grad_(True)
        ms.requires_grad_(True)
    return mw, ms, rw, rs


@pytest.mark.parametrize("ssr", ["sft", "flip", "off", "self_sample"])
def test_sspo_loss_matches_hand_formula(ssr):
    mw, ms, rw, rs = batch_tensors()
    loss, info = sspo_loss(mw, ms, rw, rs, beta=BETA, ssr=ssr)

    logits = [hand_logit(*row, BETA, i) for row, i in zip(BATCH, HAND_INDICATOR[ssr])]
    expected = sum(neg_log_sigmoid(x) for x in logits) / len(logits)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert info["ssr_indicator"].tolist() == HAND_INDICATOR[ssr]
    assert info["reward_margin"].tolist() == pytest.approx(logits, rel=1e-12)
    assert info["implicit_acc"].item() == pytest.approx(HAND_IMPLICIT_ACC)
    hand_sft_fraction = {"sft": 0.5, "flip": 0.5, "off": 0.0, "self_sample": 0.25}[ssr]
    assert info["ssr_sft_fraction"].item() == pytest.approx(hand_sft_fraction)


def test_sspo_loss_literal_values():
    # Written-out numbers, one per mode, for sample 1 of BATCH alone:
    # Δw = 0.7 − 0.5 = 0.2, Δs = 0.2 − 0.3 = −0.1, β = 10, β/2 = 5
    #   sft  (I=0):  logit = −5 · 0.2          = −1.0 -> loss = log(1 + e^{1.0})
    #   flip (I=−1): logit = −5 · (0.2 − 0.1)  = −0.5 -> loss = log(1 + e^{0.5})
    #   off  (I=1):  logit = −5 · (0.2 + 0.1)  = −1.5 -> loss = log(1 + e^{1.5})
    args = [torch.tensor([v], dtype=torch.float64) for v in BATCH[1]]
    for ssr, expected in [
        ("sft", math.log(1 + math.exp(1.0))),
        ("flip", math.log(1 + math.exp(0.5))),
        ("off", math.log(1 + math.exp(1.5))),
    ]:
        loss, _ = sspo_loss(*args, beta=10.0, ssr=ssr)
        assert loss.item() == pytest.approx(expected, rel=1e-12), ssr
    # And a zero logit gives log 2 regardless of beta.
    z = torch.tensor([0.25], dtype=torch.float64)
    loss, _ = sspo_loss(z, z, z, z, beta=5000.0, ssr="off")
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-12)


def test_ssr_switch_one_sample_each_side():
    # Sample 0: policy better (DPO term kept); sample 1: reference better (SFT only).
    mw = torch.tensor([0.2, 0.8])
    ms = torch.tensor([0.5, 0.5])
    rw = torch.tensor([0.4, 0.4])
    rs = torch.tensor([0.3, 0.3])
    loss, info = sspo_loss(mw, ms, rw, rs, beta=2.0, ssr="sft")
    assert info["ssr_indicator"].tolist() == [1.0, 0.0]
    assert info["ssr_sft_fraction"].item() == pytest.approx(0.5)
    # sample 0: −1 · ((0.2−0.4) − (0.5−0.3)) = 0.4 ; sample 1: −1 · (0.8−0.4) = −0.4
    expected = (neg_log_sigmoid(0.4) + neg_log_sigmoid(-0.4)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)

    _, info_flip = sspo_loss(mw, ms, rw, rs, beta=2.0, ssr="flip")
    assert info_flip["ssr_indicator"].tolist() == [1.0, -1.0]
    _, info_off = sspo_loss(mw, ms, rw, rs, beta=2.0, ssr="off")
    assert info_off["ssr_indicator"].tolist() == [1.0, 1.0]
    assert info_off["ssr_sft_fraction"].item() == 0.0


def test_self_sample_switch_reads_the_self_sample_not_the_winner():
    # Same winner errors on both samples (the paper's SSR would keep DPO for both); only x^s differs.
    mw = torch.tensor([0.2, 0.2, 0.2], dtype=torch.float64)
    rw = torch.tensor([0.4, 0.4, 0.4], dtype=torch.float64)
    ms = torch.tensor([0.1, 0.5, 0.3], dtype=torch.float64)  # policy better on x^s, worse, tie
    rs = torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64)
    loss, info = sspo_loss(mw, ms, rw, rs, beta=2.0, ssr="self_sample")
    assert info["ssr_indicator"].tolist() == [0.0, 1.0, 1.0]  # a tie keeps the DPO term
    assert info["ssr_sft_fraction"].item() == pytest.approx(1 / 3)
    # β/2 = 1: sample 0 logit −(−0.2) = 0.2; sample 1 −(−0.2 − 0.2) = 0.4; sample 2 −(−0.2 − 0) = 0.2
    expected = (neg_log_sigmoid(0.2) + neg_log_sigmoid(0.4) + neg_log_sigmoid(0.2)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    _, paper = sspo_loss(mw, ms, rw, rs, beta=2.0, ssr="sft")
    assert paper["ssr_indicator"].tolist() == [1.0, 1.0, 1.0]


def test_tie_counts_as_policy_not_worse():
    e = torch.tensor([0.37, 0.37])
    ms = torch.tensor([0.9, 0.1])
    rs = torch.tensor([0.5, 0.5])
    _, info = sspo_loss(e, ms, e.clone(), rs, beta=1.0, ssr="sft")
    assert info["ssr_indicator"].tolist() == [1.0, 1.0]
    assert info["ssr_sft_fraction"].item() == 0.0
    _, info = sspo_loss(e, ms, e.clone(), rs, beta=1.0, ssr="flip")
    assert info["ssr_indicator"].tolist() == [1.0, 1.0]


def test_all_sft_fraction_is_one():
    mw = torch.tensor([0.9, 0.8, 0.7])
    rw = torch.tensor([0.1, 0.2, 0.3])
    other = torch.tensor([0.5, 0.5, 0.5])
    _, info = sspo_loss(mw, other, rw, other, beta=1.0, ssr="sft")
    assert info["ssr_indicator"].tolist() == [0.0, 0.0, 0.0]
    assert info["ssr_sft_fraction"].item() == 1.0


@pytest.mark.parametrize("ssr", ["sft", "flip", "off", "self_sample"])
def test_info_tensors_carry_no_grad(ssr):
    mw, ms, rw, rs = batch_tensors(requires_grad=True)
    rw = rw.clone().requires_grad_(True)
    loss, info = sspo_loss(mw, ms, rw, rs, beta=BETA, ssr=ssr)
    assert loss.requires_grad
    for key in ("ssr_indicator", "ssr_sft_fraction", "implicit_acc", "reward_margin"):
        assert not info[key].requires_grad, key
        assert info[key].grad_fn is None, key


def test_indicator_is_treated_as_constant_in_backward():
    # With a grad-carrying reference too, the only gradient path through e_ref^w is Δw; the
    # indicator contributes nothing: dL/de_ref^w = −dL/de_θ^w exactly.
    mw, ms, rw, rs = batch_tensors(requires_grad=True)
    rw = rw.clone().requires_grad_(True)
    loss, _ = sspo_loss(mw, ms, rw, rs, beta=BETA, ssr="sft")
    loss.backward()
    assert torch.equal(rw.grad, -mw.grad)


@pytest.mark.parametrize("ssr", ["sft", "flip", "off", "self_sample"])
def test_gradients_match_hand_derivative(ssr):
    # L = mean_i −log σ(x_i), x_i = −β/2 (Δw_i − I_i Δs_i)
    # dL/de_θ^w_i = (β / 2B) σ(−x_i);  dL/de_θ^s_i = −I_i (β / 2B) σ(−x_i)
    mw, ms, rw, rs = batch_tensors(requires_grad=True)
    loss, _ = sspo_loss(mw, ms, rw, rs, beta=BETA, ssr=ssr)
    loss.backward()
    n = len(BATCH)
    exp_gw, exp_gs = [], []
    for row, ind in zip(BATCH, HAND_INDICATOR[ssr]):
        x = hand_logit(*row, BETA, ind)
        exp_gw.append(BETA / (2 * n) * sigmoid(-x))
        exp_gs.append(-ind * BETA / (2 * n) * sigmoid(-x))
    assert mw.grad.tolist() == pytest.approx(exp_gw, rel=1e-12)
    assert ms.grad.tolist() == pytest.approx(exp_gs, rel=1e-12, abs=0.0)


def test_gradient_directions_sft():
    mw, ms, rw, rs = batch_tensors(requires_grad=True)
    loss, info = sspo_loss(mw, ms, rw, rs, beta=BETA, ssr="sft")
    loss.backward()
    indicator = info["ssr_indicator"]
    # Descent lowers the winner error on every sample.
    assert (mw.grad > 0).all()
    # DPO samples (I=1) push the self-sample error up; SFT samples (I=0) leave it alone.
    assert (ms.grad[indicator == 1] < 0).all()
    assert (ms.grad[indicator == 0] == 0).all()
    assert (indicator == 0).any() and (indicator == 1).any()


def test_gradient_directions_flip():
    mw, ms, rw, rs = batch_tensors(requires_grad=True)
    loss, info = sspo_loss(mw, ms, rw, rs, beta=BETA, ssr="flip")
    loss.backward()
    indicator = info["ssr_indicator"]
    assert (mw.grad > 0).all()
    assert (ms.grad[indicator == 1] < 0).all()
    # A flipped sample is a second winner: descent lowers its error too.
    assert (ms.grad[indicator == -1] > 0).all()
    assert (indicator == -1).any()


def test_gradient_directions_off():
    mw, ms, rw, rs = batch_tensors(requires_grad=True)
    loss, _ = sspo_loss(mw, ms, rw, rs, beta=BETA, ssr="off")
    loss.backward()
    assert (mw.grad > 0).all()
    assert (ms.grad < 0).all()


def test_gradient_descent_step_lowers_winner_error_and_loss():
    mw, ms, rw, rs = batch_tensors(requires_grad=True)
    loss, _ = sspo_loss(mw, ms, rw, rs, beta=BETA, ssr="sft")
    loss.backward()
    with torch.no_grad():
        new_mw = mw - 1e-3 * mw.grad
        new_ms = ms - 1e-3 * ms.grad
        new_loss, _ = sspo_loss(new_mw, new_ms, rw, rs, beta=BETA, ssr="sft")
    assert (new_mw < mw).all()
    assert new_loss < loss


@pytest.mark.parametrize("bad", ["dpo", "SFT", "", "none"])
def test_invalid_ssr_raises(bad):
    mw, ms, rw, rs = batch_tensors()
    with pytest.raises(ValueError):
        sspo_loss(mw, ms, rw, rs, beta=BETA, ssr=bad)


def test_off_mode_equals_dpo_loss():
    mw, ms, rw, rs = batch_tensors()
    a, info_a = sspo_loss(mw, ms, rw, rs, beta=BETA, ssr="off")
    b, info_b = dpo_loss(mw, ms, rw, rs, beta=BETA)
    assert torch.equal(a, b)
    assert torch.equal(info_a["reward_margin"], info_b["reward_margin"])


# ---------------------------------------------------------------------------
# dpo_loss
# ---------------------------------------------------------------------------


def test_dpo_loss_matches_hand_formula():
    # loss_i = −log σ(−β/2 · ((e_θ^w − e_θ^l) − (e_ref^w − e_ref^l)))
    rows = [(0.3, 0.6, 0.5, 0.4), (0.7, 0.2, 0.5, 0.3), (0.1, 0.1, 0.1, 0.1)]
    beta = 4.0
    mw, ml, rw, rl = (torch.tensor(c, dtype=torch.float64) for c in zip(*rows))
    loss, info = dpo_loss(mw, ml, rw, rl, beta=beta)
    logits = [-beta / 2 * ((a - b) - (c - d)) for a, b, c, d in rows]
    # row 0: −2 · (−0.3 − 0.1) = 0.8; row 1: −2 · (0.5 − 0.2) = −0.6; row 2: 0
    assert logits == pytest.approx([0.8, -0.6, 0.0])
    expected = (math.log(1 + math.exp(-0.8)) + math.log(1 + math.exp(0.6)) + math.log(2.0)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert info["reward_margin"].tolist() == pytest.approx(logits, rel=1e-12, abs=1e-15)
    # model_diff < ref_diff: row 0 yes (−0.3 < 0.1), row 1 no, row 2 no (0 < 0 is false)
    assert info["implicit_acc"].item() == pytest.approx(1 / 3)
    assert not info["implicit_acc"].requires_grad


def test_dpo_loss_gradient_direction():
    rows = [(0.3, 0.6, 0.5, 0.4), (0.7, 0.2, 0.5, 0.3)]
    beta = 4.0
    mw, ml, rw, rl = (torch.tensor(c, dtype=torch.float64) for c in zip(*rows))
    mw.requires_grad_(True)
    ml.requires_grad_(True)
    loss, _ = dpo_loss(mw, ml, rw, rl, beta=beta)
    loss.backward()
    # descent lowers the winner error and raises the loser error
    assert (mw.grad > 0).all()
    assert (ml.grad < 0).all()
    n = len(rows)
    for i, (a, b, c, d) in enumerate(rows):
        x = -beta / 2 * ((a - b) - (c - d))
        g = beta / (2 * n) * sigmoid(-x)
        assert mw.grad[i].item() == pytest.approx(g, rel=1e-12)
        assert ml.grad[i].item() == pytest.approx(-g, rel=1e-12)


# ---------------------------------------------------------------------------
# per_sample_error
# ---------------------------------------------------------------------------


def test_per_sample_error_hand_values_4d():
    pred = torch.zeros(2, 4, 8, 8)
    target = torch.zeros(2, 4, 8, 8)
    target[0] = 2.0  # every element off by 2 -> mean squared error 4
    target[1, 3, 5, 6] = 3.0  # one element off by 3 -> 9 / 256
    err = per_sample_error(pred, target)
    assert err.shape == (2,)
    assert err.tolist() == pytest.approx([4.0, 9.0 / 256.0])


def test_per_sample_error_hand_values_5d():
    pred = torch.ones(3, 4, 2, 8, 8)
    target = torch.ones(3, 4, 2, 8, 8)
    target[1, :, 1] = -1.0  # half the frames off by 2 -> 4 * 0.5 = 2
    target[2, 0, 0, 0, 0] = 1.5  # one of 512 elements off by 0.5 -> 0.25 / 512
    err = per_sample_error(pred, target)
    assert err.shape == (3,)
    assert err.tolist() == pytest.approx([0.0, 2.0, 0.25 / 512.0])


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 4, 3, 8, 8)])
def test_per_sample_error_is_mean_of_squared_difference(shape):
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(shape, generator=g, dtype=torch.float64)
    target = torch.randn(shape, generator=g, dtype=torch.float64)
    err = per_sample_error(pred, target)
    assert err.shape == (shape[0],)
    for i in range(shape[0]):
        diffs = (pred[i] - target[i]).flatten().tolist()
        expected = sum(d * d for d in diffs) / len(diffs)
        assert err[i].item() == pytest.approx(expected, rel=1e-6)


def test_per_sample_error_half_inputs_give_float32_and_grad():
    pred = torch.randn(2, 4, 8, 8, dtype=torch.float16, requires_grad=True)
    target = torch.randn(2, 4, 8, 8, dtype=torch.float16)
    err = per_sample_error(pred, target)
    assert err.dtype == torch.float32
    err.sum().backward()
    assert pred.grad is not None and pred.grad.shape == pred.shape
