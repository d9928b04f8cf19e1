"""The replay of a one-loss method's step, shared by the whole-step tests of DAN, JAN (and JAN-A),
Deep CORAL, MCC and BNM (tests/methods/test_{dan,jan,coral,mcc,bnm}.py): one SGD step of
``CE + trade_off * transfer(ref, f, z, ns) [+ w_ent H(p_t)]`` on a deep copy, and the kernels of DAN
and JAN written from the papers (not from the library's losses).
"""

import copy

import torch
import torch.nn.functional as F

from step_replay import (BOTTLENECK, LR, MOMENTUM, WD, TinyBackbone, assert_close_logs, assert_same_state, forward,
                         mean_entropy, run_one_batch, sgd)


def sized_batch(ns: int = 5, nt: int = 7, seed: int = 0):
    """``ns`` source rows (labels 0, 1, 2, 0, ...) and ``nt`` target rows (shifted and scaled), 6-d."""
    g = torch.Generator().manual_seed(seed)
    xs, xt = torch.randn(ns, 6, generator=g), torch.randn(nt, 6, generator=g) * 1.5 + 0.5
    return {"source": (xs, torch.arange(ns) % 3), "target": (xt, torch.arange(nt))}


def make(cls, **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("lr_mult", {"backbone": 0.5, "classifier": 2.0})
    return cls(TinyBackbone(), 3, sgd(), bottleneck=BOTTLENECK, **kwargs)


def replay_one_loss(ref, b, transfer, trade_off, lr_mult, negate=(), w_ent=0.0):
    """One SGD step on ``ref``: ``CE + trade_off * transfer(ref, f, z, ns) [+ w_ent * H(p_t)]``; the
    gradients of the parameters under ``negate`` are reversed (an adversary ascending the loss)."""
    (xs, ys), (xt, _) = b["source"], b["target"]
    ns = len(xs)
    ref.train()
    f, z = forward(ref, torch.cat([xs, xt]))
    loss_cls = F.cross_entropy(z[:ns], ys)
    loss_t = transfer(ref, f, z, ns)
    loss = loss_cls + trade_off * loss_t
    logs = {"train/loss_cls": loss_cls, "train/loss_transfer": loss_t,
            "train/source_acc": (z[:ns].argmax(1) == ys).float().mean()}
    if w_ent:
        ent = mean_entropy(z[ns:])
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
    assert_close_logs(logged, replay_one_loss(ref, b, transfer, trade_off, lr_mult, **kw))
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
