"""Self-ensembling: 2 steps through Lightning against a plain-torch replay on deep copies (written from
the paper and TLlib, not from the library's losses): the teacher forwards the weak view in training
mode (its own BN statistics), the student ``[x_s; x_strong]``; the EMA update follows each optimiser
step. And the network it predicts with.
"""

import copy
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from lightning_da.methods.self_ensemble import SelfEnsemble
from step_replay import (OneBatchData, TinyBackbone, assert_close_logs, assert_same_state, replay_sgd, run_batches, views,
                         xs_ys_xt)


def test_self_ensemble_steps_match_replay():
    torch.manual_seed(0)
    lr, alpha, w_c, w_b, w_ent = 0.2, 0.7, 2.5, 0.3, 0.1
    kw = dict(bottleneck={"dim": 5, "batch_norm": True, "relu": True, "dropout": 0.0}, lr_mult={"backbone": 0.5},
              extra_losses={"entropy": w_ent}, ema_alpha=alpha, consistency_weight=w_c, class_balance_weight=w_b)
    model = SelfEnsemble(TinyBackbone(), 3, partial(torch.optim.SGD, lr=lr, momentum=0.9, weight_decay=1e-3), **kw)
    xs, ys, _ = xs_ys_xt()
    x_weak, x_strong = views()
    # a threshold between the teacher's confidences at the first step, so that the mask is mixed
    probe = copy.deepcopy(model.teacher).train()
    conf = probe["classifier"](probe["bottleneck"](probe["backbone"](x_weak))).softmax(1).amax(1).sort().values
    model.threshold = threshold = float((conf[2] + conf[3]) / 2)
    ref = copy.deepcopy(model)
    batch = {"source": (xs, ys), "target": ((x_weak, x_strong), torch.arange(7))}
    logged, _ = run_batches(model, data=OneBatchData(batch, repeat=2))

    ns = len(xs)
    ref.train()
    t = ref.teacher
    opt = replay_sgd([{"params": list(ref.backbone.parameters()), "lr": lr * 0.5},
               {"params": list(ref.bottleneck.parameters()), "lr": lr},
               {"params": list(ref.classifier.parameters()), "lr": lr}], lr)
    masks = []
    for _ in range(2):
        with torch.no_grad():
            q = t["classifier"](t["bottleneck"](t["backbone"](x_weak))).softmax(1)
        z = ref.classifier(ref.bottleneck(ref.backbone(torch.cat([xs, x_strong]))))
        p = z[ns:].softmax(1)
        mask = (q.max(1).values > threshold).float()
        masks.append(mask)
        cons = (mask * ((p - q) ** 2).sum(1)).mean()
        pbar = p.mean(0)
        balance = -(1 / 3 * torch.log(pbar) + 2 / 3 * torch.log(1 - pbar)).mean() * mask.mean()
        ce = F.cross_entropy(z[:ns], ys)
        ent = -(p * torch.log(p + 1e-5)).sum(1).mean()
        loss = ce + w_c * cons + w_b * balance + w_ent * ent
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():  # EMA of the parameters only; the teacher's BN buffers are its own
            for name in ("backbone", "bottleneck", "classifier"):
                for pt, ps in zip(t[name].parameters(), getattr(ref, name).parameters()):
                    pt.mul_(alpha).add_(ps, alpha=1 - alpha)
    assert 0 < masks[0].sum() < 7
    assert_close_logs(logged[1], {"train/loss": loss, "train/loss_cls": ce,
                                  "train/loss_transfer": w_c * cons + w_b * balance,
                                  "train/loss_consistency": cons, "train/loss_class_balance": balance,
                                  "train/loss_entropy": ent, "train/confident_ratio": mask.mean()})
    assert_same_state(model, ref)
    assert any(k.startswith("teacher.") and "running_mean" in k for k in model.state_dict())  # checkpointed
    assert all(not p.requires_grad for p in model.teacher.parameters())


def test_self_ensemble_predicts_with_the_configured_network():
    torch.manual_seed(0)
    sgd_ = partial(torch.optim.SGD, lr=0.1)
    student = SelfEnsemble(TinyBackbone(), 3, sgd_).eval()
    teacher = SelfEnsemble(TinyBackbone(), 3, sgd_, predict_with="teacher").eval()
    x = torch.randn(4, 6)
    with torch.no_grad():
        teacher.teacher["classifier"].bias.add_(1.0)
        student.teacher["classifier"].bias.add_(1.0)
        torch.testing.assert_close(student(x), student.classifier(student.bottleneck(student.backbone(x))))
        t = teacher.teacher
        torch.testing.assert_close(teacher(x), t["classifier"](t["bottleneck"](t["backbone"](x))))
    with pytest.raises(ValueError, match=r"SelfEnsemble does not use the option\(s\) \['trade_off'\]"):
        SelfEnsemble(TinyBackbone(), 3, sgd_, trade_off=2.0)
