"""CC loss: one step on ``[x_s; x_weak; x_strong]`` through Lightning against a plain-torch replay on
deep copies (written from TLlib, not from the library's losses).
"""

import copy
from functools import partial

import torch
import torch.nn.functional as F

from lightning_da.methods.cc_loss import CCLoss
from step_replay import (OneBatchData, TinyBackbone, assert_close_logs, assert_same_state, replay_sgd, run_batches, views,
                         xs_ys_xt)


def confusion(z, temperature, rows, batch_size):
    """TLlib's CC confusion of the selected rows, written out (weights B * w / sum w, C / C.sum(1))."""
    p = F.softmax(z[rows] / temperature, 1)
    w = 1 + torch.exp((p * torch.log(p + 1e-5)).sum(1)).detach()
    w = (batch_size * w / w.sum()).unsqueeze(1)
    c = (p * w).t() @ p
    return c / c.sum(1)


def test_cc_loss_step_matches_replay():
    torch.manual_seed(0)
    lr, T, w_mcc, w_c = 0.1, 1.5, 0.7, 2.0
    model = CCLoss(TinyBackbone(), 3, partial(torch.optim.SGD, lr=lr, momentum=0.9, weight_decay=1e-3),
                   bottleneck={"dim": 5, "batch_norm": True, "relu": True, "dropout": 0.0}, classifier_init="xavier",
                   temperature=T, mcc_weight=w_mcc, consistency_weight=w_c, lr_mult={"backbone": 0.5})
    xs, ys, _ = xs_ys_xt()
    x_weak, x_strong = views()
    with torch.no_grad():  # a threshold between the weak view's confidences, so that the mask is mixed
        probe = copy.deepcopy(model).train()
        zw = probe(torch.cat([xs, x_weak, x_strong]))[5:12]
        conf = F.softmax(zw / T, 1).amax(1).sort().values
    model.threshold = thr = float((conf[3] + conf[4]) / 2)
    ref = copy.deepcopy(model)
    batch = {"source": (xs, ys), "target": ((x_weak, x_strong), torch.arange(7))}
    logged, _ = run_batches(model, data=OneBatchData(batch))

    ns, b = len(xs), 7
    ref.train()
    z = ref.classifier(ref.bottleneck(ref.backbone(torch.cat([xs, x_weak, x_strong]))))
    z_w, z_s = z[ns:ns + b], z[ns + b:]
    ce = F.cross_entropy(z[:ns], ys)
    p = F.softmax(z_w / T, 1)  # MCC on the weak view
    w = 1 + torch.exp((p * torch.log(p + 1e-5)).sum(1)).detach()
    cm = (p * (b * w / w.sum()).unsqueeze(1)).t() @ p
    cm = cm / cm.sum(1, keepdim=True)
    mcc = (cm.sum() - cm.trace()) / 3
    rows = (F.softmax(z_w.detach() / T, 1).max(1).values >= thr).nonzero().squeeze(1)
    assert 0 < len(rows) < b
    cons = ((confusion(z_w.detach(), T, rows, b) - confusion(z_s, T, rows, b)) ** 2).sum() / 3 * len(rows) / b
    loss = ce + w_mcc * mcc + w_c * cons
    opt = replay_sgd([{"params": list(ref.backbone.parameters()), "lr": lr * 0.5},
               {"params": list(ref.bottleneck.parameters()), "lr": lr},
               {"params": list(ref.classifier.parameters()), "lr": lr}], lr)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert_close_logs(logged[-1], {"train/loss": loss, "train/loss_cls": ce, "train/loss_transfer": w_mcc * mcc + w_c * cons,
                                   "train/loss_mcc": mcc, "train/loss_consistency": cons,
                                   "train/confident_ratio": len(rows) / b})
    assert_same_state(model, ref)
