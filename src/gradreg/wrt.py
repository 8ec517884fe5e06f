r"""Which tensor a term differentiates, and how a model is called and read.

A term penalizes the per-sample Jacobian of the model's outputs z with respect to one tensor t of shape
``(N, ...)``: row i of t is sample i. :class:`Wrt` names t:

- ``Wrt()`` (``wrt=None``): the model input. With several inputs (a tuple, called ``model(*x)``, or a
  dict, called ``model(**x)``) ``Wrt(input=k)`` names the one to differentiate, by position or key.
- ``Wrt(module="encoder.embed")`` (``wrt="encoder.embed"``): the output of a submodule, a name from
  ``model.named_modules()``, captured in the same forward pass. Sample i is row i of that output (a
  ``(T, d)`` slice for a ``(B, T, d)`` sequence); the Jacobian is :math:`\partial z_i / \partial t_i`
  with the other rows held fixed. Gradients still reach every parameter upstream of t.
- ``features=``: a subset of t's per-sample features, integer indices into the flattened features of
  one sample (a column index for ``(B, D)`` inputs) or a boolean mask of one sample's shape. The penalty
  is the norm of the selected part of the gradient: :math:`\|(J^T w)_S\|`, or :math:`\|J_{:,S}\|_F^2`.

The module also picks the outputs from structured model returns (``output=``), detects batch coupling
and warns, once each, where it cannot or where the exact per-sample path is costly.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["Wrt", "pick_output", "run_forward", "Forward"]

_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """One warning per key and process: these warnings describe the setup, not the step."""
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, UserWarning, stacklevel=4)


@dataclass(frozen=True)
class Wrt:
    """The tensor whose per-sample Jacobian a term penalizes (see the module docstring).

    ``module``: a name from ``model.named_modules()``; None: a model input. ``input``: which input of
    several (tuple position or dict key); None: the only one. ``features``: integer indices into one
    sample's flattened features, or a boolean mask of one sample's shape; None: all of them.
    """

    module: str | None = None
    input: int | str | None = None
    features: Any = None
    features_shape: tuple[int, ...] | None = field(default=None, repr=False)  # set from a mask

    def __post_init__(self) -> None:
        if self.module is not None and (not isinstance(self.module, str) or not self.module):
            raise ValueError(f"wrt: module must be a submodule name, got {self.module!r}")
        if self.module is not None and self.input is not None:
            raise ValueError("wrt: give module= (a submodule's output) or input= (a model input), not both")
        if self.input is not None and (isinstance(self.input, bool) or not isinstance(self.input, (int, str))):
            raise ValueError(f"wrt: input must be a tuple position or a dict key, got {self.input!r}")
        if self.features is not None and self.features_shape is None:
            idx, shape = _feature_indices(self.features)
            object.__setattr__(self, "features", idx)
            object.__setattr__(self, "features_shape", shape)

    @classmethod
    def of(cls, spec) -> "Wrt | None":
        """``wrt=`` shorthands: None (the input), a :class:`Wrt`, a module name, or feature indices/mask."""
        if spec is None or isinstance(spec, Wrt):
            return spec
        if isinstance(spec, str):
            return cls(module=spec)
        if isinstance(spec, (bool, int)):
            raise ValueError(f"wrt={spec!r} is ambiguous: Wrt(features=[{spec}]) selects an input feature, "
                             f"Wrt(input={spec}) a model input")
        if isinstance(spec, (list, tuple, Tensor)) or hasattr(spec, "__array__"):
            return cls(features=spec)
        raise ValueError(f"wrt must be None, a module name, feature indices or mask, or gradreg.Wrt; got {spec!r}")

    def describe(self) -> str:
        what = (f"the output of module {self.module!r}" if self.module is not None else
                "the model input" if self.input is None else f"model input {self.input!r}")
        return what + (f", features {list(self.features)}" if self.features is not None else "")

    def select(self, g: Tensor, start: int = 1) -> Tensor:
        """The selected features of gradients ``g`` whose dims from ``start`` on are one sample's."""
        if self.features is None:
            return g
        sample = tuple(g.shape[start:])
        if self.features_shape is not None and self.features_shape != sample:
            raise ValueError(f"wrt: the feature mask has shape {self.features_shape}, one sample of "
                             f"{self.describe()} has {sample}")
        numel = g[(0,) * start].numel() if g.numel() else 0
        if self.features and max(self.features) >= numel:
            raise ValueError(f"wrt: feature index {max(self.features)} out of range for {numel} features "
                             f"per sample of {self.describe()}")
        idx = torch.tensor(self.features, device=g.device)
        return g.flatten(start).index_select(start, idx)


INPUT = Wrt()  # the default: the model's only input, all features


def _feature_indices(features) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    t = torch.as_tensor(features)
    if t.dtype == torch.bool:
        idx = tuple(t.flatten().nonzero().flatten().tolist())
        shape: tuple[int, ...] | None = tuple(t.shape)
    elif not t.is_floating_point() and not t.is_complex() and t.dim() <= 1:
        idx, shape = tuple(int(i) for i in t.flatten().tolist()), None
        if min(idx, default=0) < 0:
            raise ValueError(f"wrt: feature indices must be >= 0, got {list(idx)}")
        if len(set(idx)) != len(idx):
            raise ValueError(f"wrt: feature indices repeat, got {list(idx)}")
    else:
        raise ValueError(f"wrt: features must be integer indices or a boolean mask, got {features!r}")
    if not idx:
        raise ValueError("wrt: no features selected")
    return idx, shape


# --- inputs: a tensor (model(x)), a tuple/list (model(*x)) or a dict (model(**x)) ------------------

def call_model(model, inputs):
    if isinstance(inputs, Tensor):
        return model(inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(*inputs)


def _entries(inputs) -> list[tuple[Any, Any]]:
    if isinstance(inputs, Tensor):
        return [(None, inputs)]
    if isinstance(inputs, Mapping):
        return list(inputs.items())
    if isinstance(inputs, (tuple, list)):
        return list(enumerate(inputs))
    raise ValueError(f"x must be a tensor, a tuple/list of inputs (model(*x)) or a dict (model(**x)), "
                     f"got {type(inputs).__name__}")


def _rebuild(inputs, values: dict):
    if isinstance(inputs, Tensor):
        return values.get(None, inputs)
    if isinstance(inputs, Mapping):
        return {k: values.get(k, v) for k, v in inputs.items()}
    return type(inputs)(values.get(i, v) for i, v in enumerate(inputs)) if isinstance(inputs, tuple) \
        else [values.get(i, v) for i, v in enumerate(inputs)]


def batch_size(inputs) -> int:
    for _, v in _entries(inputs):
        if isinstance(v, Tensor) and v.dim() > 0:
            return v.shape[0]
    raise ValueError("x holds no batched tensor")


def concat_inputs(x, extra):
    """``x`` with the rows of ``extra`` (same structure) appended to every batched tensor."""
    if isinstance(x, Tensor):
        return torch.cat([x, extra.to(x.device, x.dtype)])
    ex = dict(_entries(extra))
    return _rebuild(x, {k: torch.cat([v, ex[k].to(v.device, v.dtype)]) for k, v in _entries(x)
                        if isinstance(v, Tensor) and v.dim() > 0})


def input_key(inputs, wrt: Wrt, where: str):
    keys = [k for k, v in _entries(inputs) if isinstance(v, Tensor)]
    if wrt.input is not None:
        if wrt.input not in dict(_entries(inputs)):
            raise ValueError(f"{where}: wrt names input {wrt.input!r}; x has {keys}")
        return wrt.input
    if len(keys) != 1:
        raise ValueError(f"{where}: x has {len(keys)} tensor inputs {keys}; say which one is differentiated "
                         f"with wrt=gradreg.Wrt(input=<position or key>), or name a module with wrt='<name>'")
    return keys[0]


def _float_or_explain(t, wrt: Wrt, model, where: str) -> None:
    if not isinstance(t, Tensor) or t.dim() < 2:
        raise ValueError(f"{where}: x must be a batched tensor of shape (B, ...) for wrt={wrt.describe()}, "
                         f"got {tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    if not t.is_floating_point():
        embeds = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)] \
            if isinstance(model, nn.Module) else []
        hint = f" (embedding modules here: {', '.join(map(repr, embeds))})" if embeds else ""
        raise ValueError(f"{where}: wrt={wrt.describe()} is a {t.dtype} tensor (token ids?), which has no "
                         f"gradient; name a float tensor to differentiate, e.g. an embedding's output: "
                         f"wrt='<module name>'{hint}")


# --- outputs: a tensor, or a tuple / dict / dataclass-like return with output= picking the logits ----

def pick_output(out, output, where: str) -> Tensor:
    if output is None:
        if isinstance(out, Tensor):
            return out
        # Hugging Face ModelOutput (a dict with attributes) and look-alikes name their logits "logits".
        if isinstance(out, Mapping) and isinstance(out.get("logits"), Tensor):
            return out["logits"]
        if isinstance(getattr(out, "logits", None), Tensor):
            return out.logits
        have = (f"keys {list(out)}" if isinstance(out, Mapping) else f"{len(out)} entries"
                if isinstance(out, (tuple, list)) else f"fields {list(vars(out))}" if hasattr(out, "__dict__")
                else "no tensor")
        raise ValueError(f"{where}: the model returned a {type(out).__name__} ({have}); say which entry holds "
                         "the outputs to differentiate with output= (an index, a key, an attribute name or a "
                         "callable taking the model's return)")
    if callable(output):
        t = output(out)
    elif isinstance(output, int) and not isinstance(output, bool):
        t = out[output]
    elif isinstance(output, str):
        t = out[output] if isinstance(out, Mapping) else getattr(out, output)
    else:
        raise ValueError(f"{where}: output must be an index, a key, an attribute name or a callable, got {output!r}")
    if not isinstance(t, Tensor):
        raise ValueError(f"{where}: output={output!r} picked a {type(t).__name__}, not a tensor")
    return t


# --- coupling -------------------------------------------------------------------------------------

def _couples(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None)


def coupling_modules(model) -> list[nn.Module]:
    return [m for m in model.modules() if _couples(m)] if isinstance(model, nn.Module) else []


# --- one forward pass -------------------------------------------------------------------------------

@dataclass
class Forward:
    """A forward pass with the tensors the terms differentiate captured.

    ``z``: the picked outputs; ``tensors[wrt_key]``: the differentiated tensor; ``coupled[wrt_key]``:
    True/False when detected, None when it could not be (a plain callable with no BatchNorm module seen).
    """

    model: Any
    inputs: Any
    output: Any
    where: str
    z: Tensor = None
    tensors: dict = field(default_factory=dict)
    coupled: dict = field(default_factory=dict)

    def rerun(self, wrt: Wrt) -> Callable[[Tensor], Tensor]:
        """``t -> z``: the model's picked outputs with the differentiated tensor replaced by ``t``
        (what finite-difference and forward-mode estimators evaluate)."""
        if wrt.module is None:  # built lazily: most terms never call it
            return lambda t: pick_output(call_model(self.model, _rebuild(
                self.inputs, {input_key(self.inputs, wrt, self.where): t})), self.output, self.where)
        module = dict(self.model.named_modules())[wrt.module]

        def run(t: Tensor) -> Tensor:
            handle = module.register_forward_hook(lambda m, a, o: t)
            try:
                return pick_output(call_model(self.model, self.inputs), self.output, self.where)
            finally:
                handle.remove()
        return run


def _key(wrt: Wrt):
    return (wrt.module, wrt.input)


def run_forward(model, inputs, wrts: Sequence[tuple[Wrt, bool]], *, output=None, where: str,
                detect: bool) -> Forward:
    """Call ``model`` once on ``inputs``, capturing every ``(wrt, grad)`` tensor (made differentiable
    where ``grad``: estimators that only perturb a tensor need it captured, not differentiable).

    Must run with gradients enabled. The user's tensors are never detached: an input that already
    requires grad is differentiated as it is (so its upstream graph and its ``.grad`` keep working); one
    that does not gets a differentiable alias. Inference-mode tensors are cloned (they cannot be saved
    for backward). ``detect``: find out whether the samples are coupled downstream of each tensor.
    """
    fwd = Forward(model=model, inputs=inputs, output=output, where=where)
    entries = _entries(inputs)
    values = {k: v.clone() for k, v in entries if isinstance(v, Tensor) and v.is_inference()}
    b = None
    grads: dict = {}
    for wrt, grad in wrts:
        grads[_key(wrt)] = grads.get(_key(wrt), False) or grad
    wrts = list({_key(w): w for w, _ in wrts}.values())
    for wrt in wrts:
        if wrt.module is not None:
            continue
        key = input_key(inputs, wrt, where)
        t = values.get(key, dict(entries)[key])
        _float_or_explain(t, wrt, model, where)
        values[key] = t if t.requires_grad or not grads[_key(wrt)] else t.detach().requires_grad_(True)
        fwd.tensors[_key(wrt)] = values[key]
        b = t.shape[0]
    if values:
        inputs = fwd.inputs = _rebuild(inputs, values)
    events: list = []  # (kind, payload) in call order: captures and coupling BatchNorm calls
    handles = []
    modules = [w for w in wrts if w.module is not None]
    try:
        if modules:
            if not isinstance(model, nn.Module):
                raise ValueError(f"{where}: wrt names module {modules[0].module!r}, but the model is a "
                                 f"{type(model).__name__}, not an nn.Module with named submodules")
            named = dict(model.named_modules())
            b = batch_size(inputs) if b is None else b
            for wrt in modules:
                if wrt.module not in named:
                    near = [n for n in named if n and (wrt.module in n or n in wrt.module)][:8] or list(named)[1:9]
                    raise ValueError(f"{where}: no module named {wrt.module!r} in the model; valid names include "
                                     f"{', '.join(map(repr, near))} (see model.named_modules())")
                handles.append(named[wrt.module].register_forward_hook(
                    _capture(fwd, wrt, grads[_key(wrt)], model, b, events)))
        if detect:
            if isinstance(model, nn.Module):
                bns = coupling_modules(model)
                if modules and bns:  # which BatchNorms run after each capture (forward order)
                    handles += [m.register_forward_pre_hook(lambda m, a: events.append(("bn", None)))
                                for m in bns]
            else:  # a plain callable: see which BatchNorm modules run inside it
                bns = []
                handles.append(nn.modules.module.register_module_forward_pre_hook(
                    lambda m, a: events.append(("bn", None)) if _couples(m) else None))
        raw = call_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    for wrt in modules:
        if _key(wrt) not in fwd.tensors:
            raise ValueError(f"{where}: module {wrt.module!r} did not run in the forward pass")
    fwd.z = pick_output(raw, output, where)
    if detect:
        seen = [i for i, (kind, _) in enumerate(events) if kind == "bn"]
        for wrt in wrts:
            if wrt.module is not None and isinstance(model, nn.Module):
                at = next(i for i, (kind, k) in enumerate(events) if kind == "capture" and k == _key(wrt))
                fwd.coupled[_key(wrt)] = any(i > at for i in seen)
            elif isinstance(model, nn.Module):
                fwd.coupled[_key(wrt)] = bool(bns)
            else:
                fwd.coupled[_key(wrt)] = True if seen else None
    return fwd


def _capture(fwd: Forward, wrt: Wrt, grad: bool, model, b: int, events: list):
    def hook(module, args, out):
        where = fwd.where
        if _key(wrt) in fwd.tensors:
            raise ValueError(f"{where}: module {wrt.module!r} runs more than once in one forward pass; name a "
                             "module that runs once")
        if not isinstance(out, Tensor):
            raise ValueError(f"{where}: module {wrt.module!r} returns a {type(out).__name__}, not a tensor; "
                             "name a submodule that returns the tensor to differentiate")
        _float_or_explain(out, wrt, model, where)
        if out.shape[0] != b:
            raise ValueError(f"{where}: the output of module {wrt.module!r} has shape {tuple(out.shape)}; its "
                             f"first dimension must be the batch ({b}), one row per sample")
        t = out if out.requires_grad or not grad else out.detach().requires_grad_(True)
        fwd.tensors[_key(wrt)] = t
        events.append(("capture", _key(wrt)))
        if not t.requires_grad:
            return None
        # Downstream code gets a copy: an in-place op after the module (ReLU(inplace=True)) would
        # otherwise rewrite t itself, and the gradient would silently be taken w.r.t. the later value.
        return t.clone()
    return hook
