"""Whole-step tests of DAN, JAN (and JAN-A), Deep CORAL, MCC and BNM: one batch through Lightning
against a plain-torch replay on deep copies, written from the papers (not from the library's losses):

* DAN:  ``CE + w * MK-MMD^2(f_s, f_t)``, Gaussian kernels at ``2 a mean(D)`` (Long et al. 2015);
* JAN:  ``CE + w * JMMD`` with the product of the feature kernels and a fixed-width softmax kernel;
  JAN-A adds ``theta = W . + b`` per layer, trained to *ascend* the JMMD (Long et al. 2017);
* Deep CORAL: ``CE + w * ||C_S - C_T||_F^2 / (4 d^2)`` (Sun & Saenko 2016);
* MCC:  ``CE + w * class confusion of softmax(z_t / T)`` (Jin et al. 2020);
* BNM:  ``CE - w * ||softmax(z_t)||_* / min(B, C)`` (Cui et al. 2020; the official code's mean);

each with SGD (momentum, weight decay, per-module learning rates) on source and target batches of
different contents (and sizes, where the estimate allows), and a few steps of each digits experiment
through the Hydra app.
"""

import copy
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from conftest import QUICK, SHARED_DATA, make_cfg, needs_shared
from lightning_da.methods.bnm import BNM
from lightning_da.methods.coral import DeepCORAL
from lightning_da.methods.dan import DAN
from lightning_da.methods.jan import JAN
from lightning_da.methods.mcc import MCC
from lightning_da.train import train
from step_replay import TinyBackbone, assert_close_logs, assert_same_state, changed_any, run_one_batch

LR, MOMENTUM, WD = 0.1, 0.9, 1e-3
BOTTLENECK = {"dim": 5, "batch_norm": True, "relu": True, "dropout": 0.0}


def batch(ns: int = 5, nt: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xs, xt = torch.randn(ns, 6, generator=g), torch.randn(nt, 6, generator=g) * 1.5 + 0.5
    return {"source": (xs, torch.arange(ns) % 3), "target": (xt, torch.arange(nt))}


def make(cls, **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("lr_mult", {"backbone": 0.5, "classifier": 2.0})
    return cls(TinyBackbone(), 3, partial(torch.optim.SGD, lr=LR, momentum=MOMENTUM, weight_decay=WD),
               bottleneck=BOTTLENECK, **kwargs)


def replay(ref, b, transfer, trade_off, lr_mult, negate=(), w_ent=0.0):
    """One SGD step on ``ref``: ``CE + trade_off * transfer(ref, f, z, ns) [+ w_ent * H(p_t)]``; the
    gradients of the parameters under ``negate`` are reversed (an adversary ascending the loss)."""
    (xs, ys), (xt, _) = b["source"], b["target"]
    ns = len(xs)
    ref.train()
    f = ref.bottleneck(ref.backbone(torch.cat([xs, xt])))
    z = ref.classifier(f)
    loss_cls = F.cross_entropy(z[:ns], ys)
    loss_t = transfer(ref, f, z, ns)
    loss = loss_cls + trade_off * loss_t
    logs = {"train/loss_cls": loss_cls, "train/loss_transfer": loss_t,
            "train/source_acc": (z[:ns].argmax(1) == ys).float().mean()}
    if w_ent:
        p_t = z[ns:].softmax(1)
        ent = -(p_t * torch.log(p_t + 1e-5)).sum(1).mean()
        loss = loss + w_ent * ent
        logs["train/loss_entropy"] = ent
    logs["train/loss"] = loss
    groups = [{"params": list(m.parameters()), "lr": LR * lr_mult.get(name, 1.0)}
              for name, m in ref.named_children() if name != "eval_metrics" and list(m.parameters())]
    opt = torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM, weight_decay=WD)
    opt.zero_grad()
    loss.backward()
    for name in negate:
        for p in getattr(ref, name).parameters():
            p.grad = -p.grad
    opt.step()
    return {k: v.detach() for k, v in logs.items()}


def check(model, b, transfer, trade_off, lr_mult, **kw):
    ref = copy.deepcopy(model)
    logged = run_one_batch(model, b)
    assert_close_logs(logged, replay(ref, b, transfer, trade_off, lr_mult, **kw))
    assert_same_state(model, ref)
    return ref


# ---------------------------------------------------------------- kernels written from the papers
def sq_dists(x):
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


def multi_kernel(x, alphas):
    d = sq_dists(x)
    sigma2 = d.detach().mean()  # the bandwidth is a statistic of the batch, not trained through
    return sum(torch.exp(-d / (2 * a * sigma2)) for a in alphas)


def mmd2(k, ns, estimator):
    n = len(k)
    nt = n - ns
    if estimator == "linear":  # n cyclic pairs (i, i+1 mod n) of quad-tuples
        i = torch.arange(ns)
        j = (i + 1) % ns
        return (k[i, j] + k[ns + i, ns + j] - k[i, ns + j] - k[j, ns + i]).mean()
    kss, ktt, kst = k[:ns, :ns], k[ns:, ns:], k[:ns, ns:]
    if estimator == "biased":
        return kss.mean() + ktt.mean() - 2 * kst.mean()
    off_s = kss[~torch.eye(ns, dtype=torch.bool)].mean()
    off_t = ktt[~torch.eye(nt, dtype=torch.bool)].mean()
    return off_s + off_t - 2 * kst.mean()


# ---------------------------------------------------------------- DAN
def test_dan_step_unbiased_unequal_batches():
    alphas, trade_off = (0.5, 1.0, 3.0), 0.7
    lr_mult = {"backbone": 0.5, "classifier": 2.0}
    model = make(DAN, alphas=alphas, estimator="unbiased", offset=False, trade_off=trade_off,
                 extra_losses={"entropy": 0.2})

    def transfer(ref, f, z, ns):
        return mmd2(multi_kernel(f, alphas), ns, "unbiased")

    check(model, batch(5, 7), transfer, trade_off, lr_mult, w_ent=0.2)


def test_dan_step_default_linear_estimate_with_offset():
    trade_off, n = 1.3, 6
    lr_mult = {"backbone": 0.5, "classifier": 2.0}
    model = make(DAN, trade_off=trade_off)  # TLlib's defaults: alphas 2^-3..2^1, linear, offset

    def transfer(ref, f, z, ns):
        return mmd2(multi_kernel(f, (0.125, 0.25, 0.5, 1.0, 2.0)), ns, "linear") + 2 / (ns - 1)

    check(model, batch(n, n, seed=3), transfer, trade_off, lr_mult)


# ---------------------------------------------------------------- JAN / JAN-A
def jmmd_replay(f, z, ns, alphas, sigma, estimator, thetas=None):
    p = z.softmax(1)
    if thetas is not None:  # the affine maps, without reversal: the test negates their gradients
        f, p = thetas[0].linear(f), thetas[1].linear(p)
    k = multi_kernel(f, alphas) * torch.exp(-sq_dists(p) / (2 * sigma ** 2))
    return mmd2(k, ns, estimator)


def test_jan_step_biased_unequal_batches():
    alphas, sigma, trade_off = (0.25, 2.0), 0.6, 0.8
    lr_mult = {"backbone": 0.5, "classifier": 2.0}
    model = make(JAN, feature_alphas=alphas, softmax_sigma=sigma, estimator="biased", offset=False,
                 trade_off=trade_off)
    assert model.thetas is None
    check(model, batch(5, 7), lambda ref, f, z, ns: jmmd_replay(f, z, ns, alphas, sigma, "biased"),
          trade_off, lr_mult)


def test_jan_adversarial_step_thetas_ascend_the_jmmd():
    alphas, sigma, trade_off = (0.5, 1.0), 0.92, 0.9
    model = make(JAN, feature_alphas=alphas, softmax_sigma=sigma, adversarial=True, trade_off=trade_off)
    before = copy.deepcopy(model)
    lr_mult = {"backbone": 0.5, "classifier": 2.0, "thetas": 0.1}  # TLlib: the thetas at 0.1 x lr

    def transfer(ref, f, z, ns):
        return jmmd_replay(f, z, ns, alphas, sigma, "unbiased", ref.thetas) + 2 / (ns - 1)

    check(model, batch(6, 6, seed=1), transfer, trade_off, lr_mult, negate=("thetas",))
    assert changed_any(model, before, "thetas")


# ---------------------------------------------------------------- Deep CORAL
def coral_replay(x_s, x_t, form):
    def cov(x):
        n = len(x)
        ones = torch.ones(1, n)
        return (x.t() @ x - (ones @ x).t() @ (ones @ x) / n) / (n - 1)  # the paper's eq. 2-3

    d = x_s.shape[1]
    diff = cov(x_s) - cov(x_t)
    if form == "paper":
        return (diff ** 2).sum() / (4 * d ** 2)
    return ((x_s.mean(0) - x_t.mean(0)) ** 2).mean() + (diff ** 2).mean()


@pytest.mark.parametrize("layer,form", [("logits", "paper"), ("features", "tllib")])
def test_coral_step(layer, form):
    trade_off = 2.5
    lr_mult = {"backbone": 0.5, "classifier": 2.0}
    model = make(DeepCORAL, layer=layer, form=form, trade_off=trade_off)

    def transfer(ref, f, z, ns):
        x = z if layer == "logits" else f
        return coral_replay(x[:ns], x[ns:], form)

    check(model, batch(5, 7), transfer, trade_off, lr_mult)


# ---------------------------------------------------------------- MCC
def mcc_replay(z_t, temperature):
    b, c = z_t.shape
    p = (z_t / temperature).softmax(1)
    h = -(p * torch.log(p + 1e-5)).sum(1)
    w = (1 + torch.exp(-h)).detach()
    w = b * w / w.sum()
    conf = p.t() @ torch.diag(w) @ p  # class confusion, eq. 5
    conf = conf / conf.sum(1, keepdim=True)  # category normalisation, eq. 6
    return (conf.sum() - conf.trace()) / c


def test_mcc_step():
    temperature, trade_off = 1.7, 0.6
    lr_mult = {"backbone": 0.5, "classifier": 2.0}
    model = make(MCC, temperature=temperature, trade_off=trade_off)
    check(model, batch(5, 7), lambda ref, f, z, ns: mcc_replay(z[ns:], temperature), trade_off, lr_mult)


# ---------------------------------------------------------------- BNM
def test_bnm_step():
    trade_off = 0.4
    lr_mult = {"bottleneck": 3.0}
    model = make(BNM, trade_off=trade_off, lr_mult=lr_mult, extra_losses={"entropy": 0.1})

    def transfer(ref, f, z, ns):
        p = z[ns:].softmax(1)
        return -torch.linalg.matrix_norm(p, ord="nuc") / min(p.shape)

    check(model, batch(5, 7), transfer, trade_off, lr_mult, w_ent=0.1)


def test_option_values_are_checked():
    with pytest.raises(ValueError, match="estimator"):
        make(DAN, estimator="quadratic")
    with pytest.raises(ValueError, match="layer"):
        make(DeepCORAL, layer="fc7")
    with pytest.raises(ValueError, match="temperature"):
        make(MCC, temperature=0.0)


# ---------------------------------------------------------------- a few steps through the Hydra app
@pytest.mark.slow
@needs_shared(SHARED_DATA)
@pytest.mark.parametrize("name,method", [("dan", "DAN"), ("jan", "JAN"), ("coral", "DeepCORAL"), ("mcc", "MCC"),
                                         ("bnm", "BNM")])
def test_digits_experiment_runs(tmp_path, name, method):
    res = train(make_cfg(tmp_path, QUICK + [f"experiment=digits_{name}", f"paths.data_dir={SHARED_DATA}"]))
    assert res["method"] == method and res["steps"] == 4
    acc = res["last"]["test/target_acc"]
    assert acc == acc and 0 <= acc <= 1  # finite
