"""MK-MMD (DAN), JMMD (JAN), CORAL and JAN-A's theta (losses/alignment.py) against slow per-element
references, values and gradients."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from lightning_da.losses.alignment import AdversarialTheta, coral_loss, jmmd, mk_mmd
from step_replay import grads


ALPHAS = (0.125, 0.25, 0.5, 1.0, 2.0)


def ref_kernel(rows, alphas=None, sigma=None):
    """K[i][j] as Python lists of scalar tensors; widths from the mean over all pairs (detached)."""
    n = len(rows)
    d = [[((rows[i] - rows[j]) ** 2).sum() for j in range(n)] for i in range(n)]
    if sigma is not None:
        return [[torch.exp(-d[i][j] / (2 * sigma ** 2)) for j in range(n)] for i in range(n)]
    mean = sum(d[i][j].detach() for i in range(n) for j in range(n)) / (n * n)
    return [[sum(torch.exp(-d[i][j] / (2 * a * mean)) for a in alphas) for j in range(n)] for i in range(n)]


def ref_mmd(k, ns, estimator):
    n = len(k)
    nt = n - ns
    s, t = range(ns), range(ns, n)
    if estimator == "unbiased":
        within_s = sum(k[i][j] for i in s for j in s if i != j) / (ns * (ns - 1))
        within_t = sum(k[i][j] for i in t for j in t if i != j) / (nt * (nt - 1))
    elif estimator == "biased":
        within_s = sum(k[i][j] for i in s for j in s) / ns ** 2
        within_t = sum(k[i][j] for i in t for j in t) / nt ** 2
    else:  # linear: cyclic pairs (i, i+1 mod n)
        total = 0.0
        for i in range(ns):
            j = (i + 1) % ns
            total = total + k[i][j] + k[ns + i][ns + j] - k[i][ns + j] - k[j][ns + i]
        return total / ns
    cross = sum(k[i][j] for i in s for j in t) / (ns * nt)
    return within_s + within_t - 2 * cross


def tllib_index_matrix(n, linear):
    """TLlib's weighting of the (2n x 2n) kernel matrix, written out from its description."""
    m = torch.zeros(2 * n, 2 * n, dtype=torch.float64)
    if linear:
        for i in range(n):
            s1, s2 = i, (i + 1) % n
            m[s1, s2] += 1 / n
            m[s1 + n, s2 + n] += 1 / n
            m[s1, s2 + n] -= 1 / n
            m[s2, s1 + n] -= 1 / n
    else:
        for i, j in itertools.product(range(n), range(n)):
            if i != j:
                m[i, j] = m[i + n, j + n] = 1 / (n * (n - 1))
            m[i, j + n] = m[i + n, j] = -1 / (n * n)
    return m


@pytest.mark.parametrize("estimator,ns,nt", [("unbiased", 4, 6), ("biased", 5, 3), ("linear", 5, 5)])
def test_mk_mmd_matches_loop_reference_values_and_gradients(estimator, ns, nt):
    g = torch.Generator().manual_seed(1)
    zs = torch.randn(ns, 3, generator=g, dtype=torch.float64, requires_grad=True)
    zt = (1.5 * torch.randn(nt, 3, generator=g, dtype=torch.float64) + 0.7).requires_grad_()
    ours = mk_mmd(zs, zt, ALPHAS, estimator, offset=False)
    ref = ref_mmd(ref_kernel(list(torch.cat([zs, zt])), ALPHAS), ns, estimator)
    torch.testing.assert_close(ours, ref)
    for a, b in zip(grads(ours, (zs, zt)), grads(ref, (zs, zt))):
        torch.testing.assert_close(a, b)
    assert grads(ours, (zs,))[0].abs().sum() > 0


def test_mk_mmd_defaults_are_tllibs_linear_estimate_with_its_offset():
    """TLlib's DAN: sum over the kernel matrix weighted by its index matrix, plus 2 / (n - 1)."""
    g = torch.Generator().manual_seed(2)
    n = 6
    zs, zt = torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randn(n, 4, generator=g, dtype=torch.float64) + 1
    k = torch.stack([torch.stack(row) for row in ref_kernel(list(torch.cat([zs, zt])), ALPHAS)])
    for estimator, linear in (("linear", True), ("unbiased", False)):
        expected = (k * tllib_index_matrix(n, linear)).sum() + 2 / (n - 1)
        got = mk_mmd(zs, zt, estimator=estimator) if estimator == "unbiased" else mk_mmd(zs, zt)
        torch.testing.assert_close(got, expected)


def test_mk_mmd_is_zero_for_identical_batches_biased_and_positive_when_shifted():
    z = torch.randn(8, 3)
    assert mk_mmd(z, z.clone(), estimator="biased", offset=False).abs() < 1e-6
    assert mk_mmd(z, z + 3.0, estimator="biased", offset=False) > 0.5


def test_linear_mmd_refuses_unequal_batches():
    with pytest.raises(ValueError, match="equal batch sizes"):
        mk_mmd(torch.randn(4, 2), torch.randn(5, 2))


@pytest.mark.parametrize("estimator", ["unbiased", "biased", "linear"])
def test_jmmd_matches_loop_reference_values_and_gradients(estimator):
    g = torch.Generator().manual_seed(3)
    ns = nt = 5
    fs = torch.randn(ns, 4, generator=g, dtype=torch.float64, requires_grad=True)
    ft = (torch.randn(nt, 4, generator=g, dtype=torch.float64) * 2).requires_grad_()
    zs = torch.randn(ns, 3, generator=g, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(nt, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ps, pt = F.softmax(zs, 1), F.softmax(zt, 1)
    kernels = [{"alphas": (0.5, 1.0, 2.0)}, {"sigma": 0.92}]
    ours = jmmd([fs, ps], [ft, pt], kernels, estimator, offset=False)
    k_f = ref_kernel(list(torch.cat([fs, ft])), (0.5, 1.0, 2.0))
    k_g = ref_kernel(list(torch.cat([ps, pt])), sigma=0.92)
    k = [[k_f[i][j] * k_g[i][j] for j in range(ns + nt)] for i in range(ns + nt)]
    ref = ref_mmd(k, ns, estimator)
    torch.testing.assert_close(ours, ref)
    for a, b in zip(grads(ours, (fs, ft, zs, zt)), grads(ref, (fs, ft, zs, zt))):
        torch.testing.assert_close(a, b)
    assert grads(ours, (zt,))[0].abs().sum() > 0  # the softmax layer carries gradient too


def test_jmmd_fixed_sigma_kernel_passes_gradcheck():
    """A fixed-width kernel has no detached statistic, so finite differences apply exactly."""
    g = torch.Generator().manual_seed(4)
    zs = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: jmmd([a], [b], [{"sigma": 0.8}], "unbiased"), (zs, zt))


def test_jmmd_single_alpha_layer_equals_mk_mmd():
    zs, zt = torch.randn(6, 3), torch.randn(6, 3)
    torch.testing.assert_close(jmmd([zs], [zt], [{"alphas": ALPHAS}], "linear"), mk_mmd(zs, zt))


def ref_coral(xs, xt, form):
    def cov(x):
        n, d = x.shape
        mu = [sum(x[i, k] for i in range(n)) / n for k in range(d)]
        return [[sum((x[i, k] - mu[k]) * (x[i, l] - mu[l]) for i in range(n)) / (n - 1) for l in range(d)]
                for k in range(d)], mu

    (cs, mus), (ct, mut) = cov(xs), cov(xt)
    d = xs.shape[1]
    sq = sum((cs[k][l] - ct[k][l]) ** 2 for k in range(d) for l in range(d))
    if form == "paper":
        return sq / (4 * d * d)
    return sum((mus[k] - mut[k]) ** 2 for k in range(d)) / d + sq / (d * d)


@pytest.mark.parametrize("form", ["paper", "tllib"])
def test_coral_matches_loop_reference_values_and_gradients(form):
    g = torch.Generator().manual_seed(5)
    xs = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    xt = (torch.randn(4, 3, generator=g, dtype=torch.float64) * 0.5 + 1).requires_grad_()
    ours, ref = coral_loss(xs, xt, form), ref_coral(xs, xt, form)
    torch.testing.assert_close(ours, ref)
    for a, b in zip(grads(ours, (xs, xt)), grads(ref, (xs, xt))):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda a, b: coral_loss(a, b, form), (xs, xt))


def test_coral_hand_worked_example():
    """d = 1: C_S = var(0, 2) = 2, C_T = var(0, 1, 2) = 1, loss = (2 - 1)^2 / 4 = 0.25."""
    xs, xt = torch.tensor([[0.0], [2.0]]), torch.tensor([[0.0], [1.0], [2.0]])
    assert coral_loss(xs, xt).item() == pytest.approx(0.25)
    assert coral_loss(xs, xt, "tllib").item() == pytest.approx(1.0)  # mean difference 0, (2 - 1)^2


def test_adversarial_theta_reverses_only_its_own_gradient():
    torch.manual_seed(0)
    theta = AdversarialTheta(3)
    z = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    out = theta(z)
    torch.testing.assert_close(out, z)  # identity at the start
    (out * w).sum().backward()
    torch.testing.assert_close(z.grad, w)  # reversed twice: the plain gradient
    torch.testing.assert_close(theta.linear.weight.grad, -(w.t() @ z.detach()))  # reversed once
    torch.testing.assert_close(theta.linear.bias.grad, -w.sum(0))
