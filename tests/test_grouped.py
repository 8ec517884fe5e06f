"""Grouped training: a stack of runs trains as each run would alone, and the sweep forms the groups."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradreg.sweep as sweep_mod
from gradreg import data as data_mod
from gradreg.models import create_model
from gradreg.objective import Objective
from gradreg.planner import group_key, groupable
from gradreg.stacking import GroupedModel
from gradreg.regularizers import REGULARIZERS, get_regularizer
from gradreg.store import ResultStore
from gradreg.sweep import auto_group_size, plan_tasks, run_sweep
from gradreg.train import RunConfig, train, train_group

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def sin_config(seed=0, terms=(), steps=40, **overrides):
    return RunConfig(dataset="sin", seed=seed, terms=terms,
                     overrides=(("steps", steps), ("eval_points", 2), *overrides.items()))


def digits_config(seed=0, terms=(), steps=12):
    return RunConfig(dataset="digits", seed=seed, terms=terms,
                     overrides=(("steps", steps), ("eval_points", 2), ("dropout", 0.0)), max_eval=100)


def _members(name, n, shape, outputs):
    models = []
    for s in range(n):
        torch.manual_seed(s)
        models.append(create_model(name, input_shape=shape, num_outputs=outputs).double())
    return models


@pytest.mark.parametrize("name,shape,outputs,fast", [("mlp", (1,), 1, True), ("mlp", (3,), 4, True),
                                                     ("lenet5", (1, 8, 8), 10, False)])
def test_grouped_forward_is_each_members_forward(name, shape, outputs, fast):
    models = _members(name, 3, shape, outputs)
    grouped = GroupedModel(models)
    assert (grouped._plan is not None) == fast  # the baddbmm path where it applies, vmap elsewhere
    x = torch.randn(3 * 5, *shape, dtype=torch.float64)
    expected = torch.cat([m(xb) for m, xb in zip(models, x.split(5))])
    torch.testing.assert_close(grouped(x), expected, rtol=1e-12, atol=1e-12)
    clone = grouped.member(1, create_model(name, input_shape=shape, num_outputs=outputs).double())
    torch.testing.assert_close(clone(x[:5]), models[1](x[:5]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_every_regularizer_on_a_group_equals_it_on_each_member(name):
    """Per-sample penalties and their weight gradients split exactly into the members' own, with each
    member's projections drawn from its own generator."""
    models = _members("mlp", 3, (4,), 5)
    grouped = GroupedModel(models)
    term = get_regularizer(name)
    x = torch.randn(3 * 6, 4, dtype=torch.float64)
    y = torch.randint(0, 5, (3 * 6,))
    gens = [torch.Generator().manual_seed(10 + g) for g in range(3)]
    got = term(grouped, x, y if term.needs_labels else None, generator=gens)
    got.sum().backward()
    for g, (m, xb, yb) in enumerate(zip(models, x.split(6), y.split(6))):
        want = term(m, xb, yb if term.needs_labels else None, generator=torch.Generator().manual_seed(10 + g))
        torch.testing.assert_close(got[6 * g:6 * (g + 1)], want, rtol=1e-10, atol=1e-12)
        want.sum().backward()
        for p_group, p in zip(grouped.stacked, m.parameters()):
            if p.grad is None:  # e.g. the output bias, which no Jacobian depends on
                assert p_group.grad is None or not p_group.grad[g].any()
            else:
                torch.testing.assert_close(p_group.grad[g], p.grad, rtol=1e-9, atol=1e-12)


def test_shared_projection_is_drawn_per_member():
    models = _members("mlp", 2, (3,), 4)
    term = get_regularizer("spectreg", projection="batch")
    x = torch.randn(8, 3, dtype=torch.float64)
    got = term(GroupedModel(models), x, generator=[torch.Generator().manual_seed(g) for g in range(2)])
    for g, m in enumerate(models):
        want = term(m, x[4 * g:4 * (g + 1)], generator=torch.Generator().manual_seed(g))
        torch.testing.assert_close(got[4 * g:4 * (g + 1)], want)


@pytest.mark.parametrize("task", ["cross_entropy", "mse"])
def test_objective_with_groups_gives_each_group_its_own_objective(task):
    """Objective(groups=G): group g's loss, task and terms, and their weight gradients, are those of a
    scalar Objective with g's weights on g's chunk and g's generator; a group whose weight is 0 gets 0
    and draws nothing from its generator."""
    models = _members("mlp", 3, (4,), 5)
    grouped = GroupedModel(models)
    x = torch.randn(3 * 6, 4, dtype=torch.float64)
    y = torch.randint(0, 5, (3 * 6,)) if task == "cross_entropy" else torch.randn(3 * 6, 5, dtype=torch.float64)
    spectreg, datagrad = (0.5, 0.0, 2.0), (0.1, 0.3, 0.0)
    objective = Objective(task, [(spectreg, "spectreg"), (torch.tensor(datagrad, dtype=torch.float64), "datagrad"),
                                 (0.2, "frobreg")], groups=3)
    gens = [torch.Generator().manual_seed(10 + g) for g in range(3)]
    out = objective(grouped, x, y, generator=gens)
    parts = out.parts()
    assert all(isinstance(v, list) and len(v) == 3 for v in parts.values())
    assert out.loss.shape == out.task.shape == (3,) and all(t.shape == (3,) for t in out.terms.values())
    out.loss.sum().backward()
    for g, (m, xb, yb) in enumerate(zip(models, x.split(6), y.split(6))):
        alone = Objective(task, [(spectreg[g], "spectreg"), (datagrad[g], "datagrad"), (0.2, "frobreg")])
        want = alone(m, xb, yb, generator=torch.Generator().manual_seed(10 + g))
        torch.testing.assert_close(out.loss[g], want.loss)
        torch.testing.assert_close(out.task[g], want.task)
        for name in want.terms:
            torch.testing.assert_close(out.terms[name][g], want.terms[name])
        # The group's own generator moved exactly when its SpectReg weight is not 0.
        assert gens[g].get_state().equal(torch.Generator().manual_seed(10 + g).get_state()) == (spectreg[g] == 0)
        want.loss.backward()
        for p_group, p in zip(grouped.stacked, m.parameters()):
            torch.testing.assert_close(p_group.grad[g], p.grad, rtol=1e-9, atol=1e-12)


def test_objective_groups_errors_are_clear():
    with pytest.raises(ValueError, match="one weight per group needs Objective\\(..., groups=N\\)"):
        Objective("cross_entropy", [((0.1, 0.2), "spectreg")])
    with pytest.raises(ValueError, match="3 weights for groups=2"):
        Objective("cross_entropy", [((0.1, 0.2, 0.3), "spectreg")], groups=2)
    with pytest.raises(ValueError, match="finite number >= 0"):
        Objective("cross_entropy", [((0.1, -1.0), "spectreg")], groups=2)
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="groups must be None or an integer >= 1"):
            Objective("cross_entropy", groups=bad)
    assert Objective("cross_entropy", groups=np.int64(2)).groups == 2
    objective = Objective("cross_entropy", [(0.1, "spectreg")], groups=2)
    model = GroupedModel(_members("mlp", 2, (4,), 3))
    with pytest.raises(ValueError, match="needs a batch divisible by 2"):
        objective(model, torch.randn(5, 4, dtype=torch.float64), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="one generator, or one per group, not 3"):
        objective(model, torch.randn(4, 4, dtype=torch.float64), torch.zeros(4, dtype=torch.long),
                  generator=[torch.Generator()] * 3)
    with pytest.raises(ValueError, match="unlabeled= and groups="):
        objective(model, torch.randn(4, 4, dtype=torch.float64), torch.zeros(4, dtype=torch.long),
                  unlabeled=torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs each sample's own loss"):
        Objective(lambda z, y: (z - z).sum(), groups=2)(model, torch.randn(4, 4, dtype=torch.float64),
                                                        torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("config", [sin_config(2, (("spectreg", 0.03),)),
                                    digits_config(1, (("datagrad", 50.0),))], ids=["sin", "digits"])
def test_a_group_of_one_is_the_run_alone_bit_for_bit(config):
    """One loop: train() is the group-of-one case, so train_group([c]) and train(c) agree exactly."""
    ds = data_mod.load_dataset(config.dataset)
    alone, (grouped,) = train(config, dataset=ds, progress=False), train_group([config], dataset=ds, progress=False)
    assert grouped.extras.pop("group_size") == 1
    assert (alone.status, alone.metrics, alone.curve) == (grouped.status, grouped.metrics, grouped.curve)

def _assert_same_run(solo, grouped, rel=1e-4):
    assert solo.status == grouped.status
    assert solo.metrics.keys() == grouped.metrics.keys()
    for k, v in solo.metrics.items():
        assert math.isclose(v, grouped.metrics[k], rel_tol=rel, abs_tol=1e-6), (k, v, grouped.metrics[k])
    assert [p.keys() for p in solo.curve] == [p.keys() for p in grouped.curve]
    for a, b in zip(solo.curve, grouped.curve):
        for k in a:
            assert math.isclose(a[k], b[k], rel_tol=rel, abs_tol=1e-6), (k, a[k], b[k])


@pytest.mark.parametrize("device", DEVICES)
def test_sin_group_matches_each_run_trained_alone(device):
    configs = [sin_config(0, (("spectreg", 0.01),)), sin_config(1, (("spectreg", 0.1),)),
               sin_config(2, (("spectreg", 0.0),)), sin_config(0, (("spectreg", 0.003),))]
    ds = data_mod.load_dataset("sin")
    grouped = train_group(configs, dataset=ds, device=device, progress=False)
    assert [r.config for r in grouped] == configs
    for config, result in zip(configs, grouped):
        solo = train(config, dataset=ds, device=device, progress=False)
        _assert_same_run(solo, result)
        assert result.extras["group_size"] == 4 and len(result.extras["test_pred"]) == len(ds.x_test)
        assert result.extras["train_x"] == solo.extras["train_x"]
    assert grouped[2].metrics["train_spectreg"] == 0.0  # λ = 0 skips the term, as a solo run does


def test_lenet_group_with_labels_and_weight_decay_matches_solo_runs():
    """LeNet-5 runs through the vmap path; datagrad needs labels; the digits recipe has weight decay.

    60 steps and λ <= 10 on purpose: at 12 steps the nets are still at chance, where near-tied logits
    let vmap's last-bit rounding flip a training point's argmax (train_acc off by one of 997 points on an
    AVX-512 machine), and at λ = 30 training amplifies those bits to 1e-4 in the losses by step 60.
    Here solo and grouped agree to about 1e-7, accuracies exactly (measured on that machine)."""
    configs = [digits_config(s, (("datagrad", lam),), steps=60) for s, lam in ((0, 3.0), (1, 10.0))]
    ds = data_mod.load_dataset("digits")
    for config, result in zip(configs, train_group(configs, dataset=ds, progress=False)):
        _assert_same_run(train(config, dataset=ds, progress=False), result)


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_group_replays_each_runs_own_masks(device):
    """Dropout 0.5 (the MNIST recipe's): each member draws its masks from its own stream, as alone."""
    configs = [RunConfig(dataset="digits", seed=s, terms=(("datagrad", lam),), max_eval=100,
                         overrides=(("steps", 40), ("eval_points", 2), ("dropout", 0.5)))
               for s, lam in ((0, 3.0), (1, 1.0), (2, 0.0))]
    assert all(groupable(c) for c in configs)
    ds = data_mod.load_dataset("digits")
    grouped = train_group(configs, dataset=ds, device=device, progress=False)
    for config, result in zip(configs, grouped):
        _assert_same_run(train(config, dataset=ds, device=device, progress=False), result)
    # Without the runs' streams (one shared generator state) the group's numbers would differ.
    assert len({r.metrics["train_loss"] for r in grouped}) == 3


def test_plain_dropout_models_stack_with_independent_masks():
    models = [nn.Sequential(nn.Linear(4, 64), nn.Dropout(0.5), nn.Linear(64, 2)) for _ in range(2)]
    grouped = GroupedModel(models)
    assert grouped.dropout_generators is None
    x = torch.randn(2 * 8, 4)
    a, b = grouped(x), grouped(x)
    assert not torch.equal(a, b)  # masks are drawn (vmap, global stream)
    grouped.eval()
    torch.testing.assert_close(grouped(x), torch.cat([m.eval()(xb) for m, xb in zip(models, x.split(8))]))


def test_a_zero_lambda_term_draws_nothing_from_the_runs_stream():
    """A solo run skips a λ = 0 term; a group must not let it shift the other terms' projections."""
    configs = [sin_config(0, (("spectreg", 0.0), ("randomonehot", 0.01))),
               sin_config(1, (("spectreg", 0.02), ("randomonehot", 0.0)))]
    ds = data_mod.load_dataset("sin")
    for config, result in zip(configs, train_group(configs, dataset=ds, progress=False)):
        _assert_same_run(train(config, dataset=ds, progress=False), result)


def test_a_diverging_member_leaves_the_others_untouched():
    ds = data_mod.load_dataset("sin")  # a fresh copy (load_dataset does not cache): poisoning it is local
    configs = [sin_config(s, (("spectreg", 0.01),), steps=120) for s in range(3)]
    # Poison one training point of member 1's subset only: its loss turns NaN, the others never see it.
    own = [set(ds.subset_indices(c.train_size, c.seed_for("subset")).tolist()) for c in configs]
    bad = next(i for i in sorted(own[1]) if i not in own[0] and i not in own[2])
    ds.y_pool[bad] = float("nan")
    grouped = train_group(configs, dataset=ds, progress=False)
    assert [r.status for r in grouped] == ["done", "diverged", "done"]
    alone = train(configs[1], dataset=ds, progress=False)
    assert alone.status == "diverged" and grouped[1].error == alone.error == "non-finite loss at step 60"
    assert grouped[1].metrics["steps"] == alone.metrics["steps"] == 60
    for g in (0, 2):
        _assert_same_run(train(configs[g], dataset=ds, progress=False), grouped[g])


def test_non_finite_final_metrics_mark_members_diverged_as_alone():
    ds = data_mod.load_dataset("sin")
    ds.x_test[3] = float("nan")
    configs = [sin_config(s, steps=20) for s in range(2)]
    grouped = train_group(configs, dataset=ds, progress=False)
    alone = train(configs[0], dataset=ds, progress=False)
    assert [r.status for r in grouped] == ["diverged", "diverged"] and alone.status == "diverged"
    assert grouped[0].error == alone.error == "non-finite final metric(s): test_mse"
    assert "test_pred" not in grouped[0].extras


def test_group_errors_are_clear():
    with pytest.raises(ValueError, match="differ only in seed and λ"):
        train_group([sin_config(0), sin_config(1, lr=0.01)], progress=False)
    with pytest.raises(ValueError, match="cannot train grouped; groupable: lenet5, mlp without BatchNorm"):
        train_group([RunConfig(dataset="digits", batchnorm=True)] * 2, progress=False)
    with pytest.raises(ValueError, match="one architecture"):
        GroupedModel([nn.Linear(2, 3), nn.Linear(3, 3)])
    with pytest.raises(ValueError, match="cannot stack BatchNorm"):
        GroupedModel([nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))] * 2)
    with pytest.raises(ValueError, match="divisible by 2"):
        GroupedModel([nn.Linear(2, 3), nn.Linear(2, 3)])(torch.randn(3, 2))
    with pytest.raises(ValueError, match="one per equal chunk"):
        get_regularizer("spectreg")(nn.Linear(2, 3), torch.randn(5, 2), generator=[torch.Generator()] * 2)
    assert train_group([], progress=False) == []


def test_group_key_ignores_only_seed_and_lambda():
    a = sin_config(0, (("spectreg", 0.01),))
    assert group_key(a) == group_key(sin_config(5, (("spectreg", 0.3),)))
    assert group_key(a) != group_key(sin_config(0))                          # different terms
    assert group_key(a) != group_key(sin_config(0, (("datagrad", 0.01),)))
    assert group_key(a) != group_key(sin_config(0, (("spectreg", 0.01),), lr=0.01))
    assert groupable(a) and groupable(digits_config()) and not groupable(RunConfig(dataset="cifar10"))
    assert not groupable(RunConfig(dataset="digits", batchnorm=True))
    assert groupable(RunConfig(dataset="mnist"))  # dropout 0.5: masks from each run's own stream


def test_plan_tasks_groups_splits_for_workers_and_falls_back():
    sins = [sin_config(s, (("spectreg", lam),)) for lam in (0.01, 0.1) for s in range(5)]
    plain = [sin_config(s) for s in range(3)]
    nets = [digits_config(s) for s in range(4)]
    tasks = plan_tasks(sins + plain + nets, group_size=None, workers=1, device="cpu")
    sizes = sorted(len(t) for t in tasks)
    assert auto_group_size(nets[0], "cpu") == 1 and auto_group_size(sins[0], "cpu") > 10
    assert sizes == [1, 1, 1, 1, 3, 10]  # one group per group key; LeNets alone on CPU
    assert sorted(c.key() for t in tasks for c in t) == sorted(c.key() for c in sins + plain + nets)
    assert all(len({group_key(c) for c in t}) == 1 for t in tasks)
    assert sorted(len(t) for t in plan_tasks(sins, group_size=4, device="cpu")) == [3, 3, 4]
    assert sorted(len(t) for t in plan_tasks(sins, workers=4, device="cpu")) == [2, 2, 3, 3]  # no idle worker
    assert all(len(t) == 1 for t in plan_tasks(sins, group_size=1, device="cpu"))
    bn = [RunConfig(dataset="digits", batchnorm=True, seed=s) for s in range(3)]
    assert all(len(t) == 1 for t in plan_tasks(bn, group_size=8, device="cpu"))  # cannot stack: alone
    assert len(plan_tasks(nets, group_size=2, device="cpu")) == 2  # an explicit size groups LeNets too
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        plan_tasks(sins, group_size=0)
    assert plan_tasks([]) == []


def test_plan_tasks_keep_the_callers_order_across_group_keys():
    """A seed-major plan (as `gradreg sweep` passes) stays seed-major, not one group key after another,
    so an interrupted sweep leaves every cell with about the same number of runs."""
    plain = [digits_config(s) for s in range(3)]
    reg = [digits_config(s, (("spectreg", 0.01),)) for s in range(3)]
    assert group_key(plain[0]) != group_key(reg[0])
    seed_major = [c for pair in zip(plain, reg) for c in pair]
    tasks = plan_tasks(seed_major, group_size=1, device="cpu")
    assert [t[0].key() for t in tasks] == [c.key() for c in seed_major]
    sins = [sin_config(s, (("spectreg", lam),)) for s in range(3) for lam in (0.01, 0.1)]
    mixed = plan_tasks(plain[:1] + sins, group_size=4, device="cpu")  # larger tasks still go first
    assert [len(t) for t in mixed] == [3, 3, 1]


def test_grouped_sweep_stores_every_run_like_solo_runs(tmp_path):
    configs = [sin_config(s, (("spectreg", lam),)) for lam in (0.01, 0.1) for s in range(2)] + [sin_config(0)]
    summary = run_sweep(configs, tmp_path / "grouped.db", workers=1, progress=False)
    assert (summary.done, summary.failed) == (5, 0)
    solo = run_sweep(configs, tmp_path / "solo.db", workers=1, group_size=1, progress=False)
    assert solo.done == 5
    with ResultStore(tmp_path / "grouped.db") as g, ResultStore(tmp_path / "solo.db") as s:
        for c in configs:
            a, b = g.get(c.key()), s.get(c.key())
            assert a["extras"].get("group_size") == (4 if c.terms else None)  # the lone baseline trains solo
            assert math.isclose(a["metrics"]["test_mse"], b["metrics"]["test_mse"], rel_tol=1e-4)


def test_a_raising_group_is_retried_run_by_run_and_an_interrupt_releases_it(tmp_path, monkeypatch):
    real_train = sweep_mod.train

    def boom(configs, **kwargs):
        raise RuntimeError("boom in a group")

    def flaky(config, **kwargs):
        if config.seed == 1:
            raise RuntimeError("boom in run 1")
        return real_train(config, **kwargs)

    monkeypatch.setattr(sweep_mod, "train_group", boom)
    monkeypatch.setattr(sweep_mod, "train", flaky)
    configs = [sin_config(s, (("spectreg", 0.01),)) for s in range(3)]
    summary = run_sweep(configs, tmp_path / "runs.db", progress=False)
    assert (summary.failed, summary.done) == (1, 2)  # the group's failure cost only the bad run
    with ResultStore(tmp_path / "runs.db") as store:
        assert "boom in run 1" in store.get(configs[1].key())["error"]
        assert store.get(configs[0].key())["status"] == store.get(configs[2].key())["status"] == "done"

    def interrupted(configs, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_mod, "train_group", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(configs, tmp_path / "other.db", progress=False)
    with ResultStore(tmp_path / "other.db") as store:
        assert len(store) == 0
