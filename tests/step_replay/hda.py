"""The semi-supervised heterogeneous DA setting of the whole-step tests of SSAN, HDANet and TargetOnly
(tests/methods/test_ssan.py, tests/methods/test_hda.py): a full batch of 9-d source rows, 5-d labelled
and unlabelled target rows, the replays' nesterov SGD, the stepwise oracle's result; and SSAN's
implicit semantic correlation loss written out per class (as SSAN's knowledge_distillation_loss_func),
the reference of the loss test and of SSAN's loss test.
"""

from functools import partial

import torch
import torch.nn.functional as F

from lightning_da.callbacks import StepwiseTargetAccuracy


C, D_S, D_T, D_COMMON = 3, 9, 5, 6
LR, MOMENTUM, WD = 0.2, 0.9, 5e-3


def hda_batch(seed: int = 0):
    """8 source rows (9-d), 5 labelled target rows (5-d), 7 unlabelled target rows (5-d, shifted and
    scaled); every class in source and labelled target, with unequal class counts."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(8, D_S, generator=g)
    xl = torch.randn(5, D_T, generator=g) * 1.5 + 0.5
    xu = torch.randn(7, D_T, generator=g) * 1.5 + 0.5
    ys = torch.tensor([0, 1, 2, 1, 0, 1, 1, 2])
    yl = torch.tensor([2, 0, 1, 2, 2])
    yu = torch.tensor([0, 1, 2, 2, 1, 0, 2])
    batch = {"source": (xs, ys), "target_labeled": (xl, yl), "target": (xu, torch.arange(7))}
    return batch, yu


def hda_sgd(groups):
    return torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM, weight_decay=WD, nesterov=True)


def stepwise_result(model):
    cbs = [c for c in model.trainer.callbacks if isinstance(c, StepwiseTargetAccuracy)]
    assert len(cbs) == 1
    return cbs[0].result()


def assert_logged_keys(logged, expected):
    """The method logs exactly these training scalars (nothing dropped, nothing unexpected)."""
    got = {k for k in logged if k.startswith("train/")}
    assert got == set(expected), f"logged {sorted(got)}, expected {sorted(expected)}"


#: the configured optimiser (a partial with ``lr`` in its keywords, as Hydra builds it)
sgd_factory = partial(torch.optim.SGD, lr=LR, momentum=MOMENTUM, weight_decay=WD, nesterov=True)


def isc_reference(z_s, y_s, z_l, y_l, alpha, T):
    """Per-class loops, as SSAN's knowledge_distillation_loss_func; C classes, the logits' width."""
    C = z_s.shape[1]
    p_s = torch.softmax(z_s / T, dim=1)
    q = torch.stack([p_s[y_s == k].mean(0) for k in range(C)])
    p_l = torch.softmax(z_l, dim=1)
    soft = 0
    for k in range(C):
        soft = soft - torch.mean(torch.sum(q[k] * torch.log(p_l[y_l == k] + 1e-5), 1))
    hard = F.cross_entropy(z_l, y_l)
    return (1 - alpha) * hard + alpha * soft
