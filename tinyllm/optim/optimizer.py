"""The ``Optimizer`` base class: parameter groups, per-parameter state, ``zero_grad``, and a
checkpointable ``state_dict``.

A parameter is a ``tl.Tensor``: ``.data`` (a float32 or float64 ndarray) and ``.grad`` (an
ndarray of the same shape, or None). Optimizers update ``p.data`` **in place** (the model
holds references to those arrays) and keep its dtype. A parameter whose ``.grad`` is None is
skipped, as in PyTorch.

Parameter groups work as in PyTorch: pass Tensors, or a list of dicts, each with ``"params"``
and any options that override the optimizer's defaults for that group::

    opt = AdamW([{"params": decay, "weight_decay": 0.1},
                 {"params": no_decay, "weight_decay": 0.0}], lr=3e-4)
    opt.param_groups[0]["lr"] = 1e-4      # schedules write the lr of each group

``state_dict()`` returns ``{"meta": <JSON-able dict>, "arrays": {name: ndarray}}``, so that a
checkpoint stores the arrays as safetensors and the meta as JSON (never pickle). The arrays
are named ``state.<i>.<name>``, ``i`` counting the parameters over all groups in order, e.g.
``state.0.exp_avg``. ``load_state_dict`` checks the parameter count and every shape before it
changes anything; resuming from it continues bitwise identically.

Devices: a parameter's state arrays live on its device (created there, ``xp(p).zeros``);
after ``model.to(device)`` they follow their parameter at the next step. On cuda the update
runs as array-module code (``_update_device``, step for step the kernel's reference, so the
same bits). ``state_dict()`` holds host copies; ``load_state_dict`` puts each array on its
parameter's device.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import backend
from ..errors import DeviceError, ShapeError

FORMAT = "tinyllm.optim/1"


def _is_param(p) -> bool:
    return backend.is_array(getattr(p, "data", None)) and hasattr(p, "grad")


class Optimizer:
    """Base class. A subclass sets ``defaults`` (its options), validates them in
    ``_check_group`` and updates one parameter in ``_update``.

    ``state`` maps ``id(param)`` to that parameter's dict: ``"step"`` (an int) and its arrays
    (moments, momentum buffer), each of the parameter's shape and dtype.
    """

    def __init__(self, params, defaults: dict):
        name = type(self).__name__
        if _is_param(params) or isinstance(params, (np.ndarray, dict)):
            raise TypeError(f"{name}: params must be an iterable of Tensors or of param-group "
                            f"dicts, got a single {type(params).__name__}")
        try:
            params = list(params)
        except TypeError:
            raise TypeError(f"{name}: params must be an iterable of Tensors or of param-group "
                            f"dicts, got {type(params).__name__}") from None
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self.state: dict[int, dict] = {}
        self._scratch: dict[np.dtype, np.ndarray] = {}
        if not params:
            raise ValueError(f"{name}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        for g in groups:
            self.add_param_group(g)
        if not any(g["params"] for g in self.param_groups):
            raise ValueError(f"{name}: got an empty parameter list (every group is empty)")

    # --- groups ---------------------------------------------------------------------------
    def add_param_group(self, group: dict) -> None:
        """Add a group: ``{"params": [...], <option>: value, ...}``. Missing options take the
        optimizer's defaults. Extra keys (e.g. ``"param_names"``) are kept and saved."""
        name = type(self).__name__
        if not isinstance(group, dict):
            raise TypeError(f"{name}: a param group must be a dict, got {type(group).__name__}")
        if "params" not in group:
            raise ValueError(f"{name}: a param group needs a 'params' entry")
        ps = group["params"]
        if _is_param(ps):
            ps = [ps]
        elif isinstance(ps, (np.ndarray, dict, str)):
            raise TypeError(f"{name}: 'params' must be an iterable of Tensors, "
                            f"got {type(ps).__name__}")
        ps = list(ps)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(ps):
            if isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str):
                raise TypeError(f"{name}: got a (name, Tensor) pair; pass model.parameters(), "
                                f"or param_groups_for_decay(model.named_parameters(), wd)")
            if not _is_param(p):
                raise TypeError(f"{name}: parameter {i} of group {len(self.param_groups)} is "
                                f"a {type(p).__name__}, not a Tensor")
            if p.data.dtype not in (np.float32, np.float64):
                raise TypeError(f"{name}: parameter {i} has dtype {p.data.dtype}; only "
                                f"float32/float64 parameters can be optimized")
            if id(p) in seen:
                raise ValueError(f"{name}: a parameter appears more than once (tied weights "
                                 f"must be passed once)")
            seen.add(id(p))
        g = {k: v for k, v in group.items() if k != "params"}
        for k, v in self.defaults.items():
            g.setdefault(k, v)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        self._check_group(g)
        if "param_names" in g and len(g["param_names"]) != len(ps):
            raise ValueError(f"{name}: 'param_names' has {len(g['param_names'])} names for "
                             f"{len(ps)} params")
        g["params"] = ps
        self.param_groups.append(g)

    def _check_group(self, group: dict) -> None:
        """Raise ValueError naming a bad option of ``group``. Subclasses extend this."""
        _check_number(self, "lr", group["lr"], lo=0.0)

    def params(self):
        """All parameters, in the order the state dict numbers them."""
        return [p for g in self.param_groups for p in g["params"]]

    # --- the step ---------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients: ``.grad = None`` (or zeros in place with
        ``set_to_none=False``)."""
        for p in self.params():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad[...] = 0

    def step(self, closure=None):
        """Update every parameter that has a gradient. ``closure`` (optional) re-evaluates the
        model and returns the loss, which ``step`` returns."""
        loss = closure() if closure is not None else None
        name = type(self).__name__
        i = 0
        for group in self.param_groups:
            self._check_group(group)
            for p in group["params"]:
                g = p.grad
                if g is not None:
                    g = g if backend.is_array(g) else np.asarray(g)
                    dev = backend.device_of(p.data)
                    if backend.device_of(g) != dev:
                        raise DeviceError(f"{name}.step: parameter {i} is on {dev} but its "
                                          f"grad is on {backend.device_of(g)}")
                    if g.shape != p.data.shape:
                        raise ShapeError(f"{name}.step: parameter {i} has shape {p.data.shape} "
                                         f"but its grad has shape {g.shape}")
                    if g.dtype != p.data.dtype:
                        g = g.astype(p.data.dtype)
                    state = self.state.get(id(p))
                    if state is None:
                        state = self.state[id(p)] = {"step": 0}
                    state["step"] += 1
                    for k, v in state.items():           # states follow a moved parameter
                        if backend.is_array(v) and backend.device_of(v) != dev:
                            state[k] = backend.to_device(v, dev)
                    if dev == "cpu":
                        self._update(p.data, g, state, group)
                    else:
                        self._update_device(p.data, g, state, group)
                i += 1
        return loss

    def _update(self, p: np.ndarray, g: np.ndarray, state: dict, group: dict) -> None:
        raise NotImplementedError

    def _update_device(self, p, g, state: dict, group: dict) -> None:
        """The update of a parameter on cuda, in array-module code."""
        raise NotImplementedError(f"{type(self).__name__}: no update for parameters on cuda")

    def _tmp(self, like: np.ndarray) -> np.ndarray:
        """A scratch array shaped like ``like`` (reused across parameters and steps)."""
        buf = self._scratch.get(like.dtype)
        if buf is None or buf.size < like.size:
            buf = self._scratch[like.dtype] = np.empty(like.size, like.dtype)
        return buf[: like.size].reshape(like.shape)

    # --- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{"meta": JSON-able dict, "arrays": {"state.<i>.<name>": ndarray}}``.

        meta holds the optimizer type, each group's options (its params as indices), the
        shape and dtype of every parameter and each parameter's integer step. The arrays are
        copies, so later steps do not change a saved state.
        """
        groups, shapes, dtypes, state_meta, arrays = [], [], [], {}, {}
        i = 0
        for group in self.param_groups:
            g = {k: _jsonable(v) for k, v in group.items() if k != "params"}
            g["params"] = list(range(i, i + len(group["params"])))
            groups.append(g)
            for p in group["params"]:
                shapes.append(list(p.data.shape))
                dtypes.append(str(p.data.dtype))
                st = self.state.get(id(p))
                if st is not None:
                    state_meta[str(i)] = {k: _jsonable(v) for k, v in st.items()
                                          if not backend.is_array(v)}
                    for k, v in st.items():
                        if backend.is_array(v):           # a host copy, from either device
                            arrays[f"state.{i}.{k}"] = (v.get() if backend.is_device(v)
                                                        else v.copy())
                i += 1
        meta = {"format": FORMAT, "type": type(self).__name__, "param_groups": groups,
                "param_shapes": shapes, "param_dtypes": dtypes, "state": state_meta}
        return {"meta": meta, "arrays": arrays}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what ``state_dict()`` returned (options of each group, steps, moments).

        Everything is checked first; on any mismatch (optimizer type, number of groups or
        parameters, a shape, an unknown or missing array) it raises and changes nothing.
        """
        name = f"{type(self).__name__}.load_state_dict"
        if not (isinstance(state_dict, dict) and "meta" in state_dict
                and "arrays" in state_dict):
            raise ValueError(f"{name}: expected a dict with 'meta' and 'arrays' "
                             f"(what state_dict() returns)")
        meta, arrays = state_dict["meta"], state_dict["arrays"]
        if meta.get("format") != FORMAT:
            raise ValueError(f"{name}: unknown format {meta.get('format')!r}, "
                             f"expected {FORMAT!r}")
        if meta.get("type") != type(self).__name__:
            raise ValueError(f"{name}: the state was saved by {meta.get('type')}, "
                             f"not {type(self).__name__}")
        saved_groups = meta["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{name}: the state has {len(saved_groups)} param groups, "
                             f"this optimizer has {len(self.param_groups)}")
        params = self.params()
        shapes = [tuple(s) for s in meta["param_shapes"]]
        if len(shapes) != len(params):
            raise ValueError(f"{name}: the state has {len(shapes)} parameters, "
                             f"this optimizer has {len(params)}")
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{name}: group {gi} has {len(saved['params'])} parameters in "
                                 f"the state but {len(group['params'])} here")
            if ("param_names" in saved and "param_names" in group
                    and list(saved["param_names"]) != list(group["param_names"])):
                diff = next(k for k, (a, b) in enumerate(zip(saved["param_names"],
                                                               group["param_names"])) if a != b)
                raise ValueError(f"{name}: group {gi} parameter {diff} is "
                                 f"{group['param_names'][diff]!r} here but "
                                 f"{saved['param_names'][diff]!r} in the state")
        for i, (p, shape) in enumerate(zip(params, shapes)):
            if p.data.shape != shape:
                raise ShapeError(f"{name}: parameter {i} has shape {p.data.shape} here but "
                                 f"{shape} in the state")
        new_groups = []
        for saved in saved_groups:
            g = {k: v for k, v in saved.items() if k != "params"}
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
            self._check_group({**self.defaults, **g})
            new_groups.append(g)
        expected = [self._state_arrays({**self.defaults, **new_groups[self._group_index(i)]})
                    for i in range(len(params))]
        new_state: dict[int, dict] = {}
        for key, st in meta["state"].items():
            i = int(key)
            if not 0 <= i < len(params):
                raise ValueError(f"{name}: state for parameter {i}, but there are only "
                                 f"{len(params)}")
            step = st.get("step")
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise ValueError(f"{name}: parameter {i} has step={step!r} in the state "
                                 f"(must be an integer >= 0)")
            new_state[i] = dict(st)
        for key, arr in arrays.items():
            parts = key.split(".")
            if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit():
                raise ValueError(f"{name}: unknown array {key!r} (expected state.<i>.<name>)")
            i = int(parts[1])
            if i not in new_state:
                raise ValueError(f"{name}: array {key!r} belongs to parameter {i}, which has "
                                 f"no saved state")
            if parts[2] not in expected[i]:
                raise ValueError(f"{name}: unknown array {key!r} ({type(self).__name__} keeps "
                                 f"{', '.join(expected[i]) or 'no arrays'} for parameter {i})")
            arr = np.asarray(backend.to_host(arr))
            if arr.shape != params[i].data.shape:
                raise ShapeError(f"{name}: {key} has shape {arr.shape} but parameter {i} has "
                                 f"shape {params[i].data.shape}")
            # a copy in the parameter's dtype: loaded arrays may be read-only (mmap)
            new_state[i][parts[2]] = backend.to_device(
                np.array(arr, dtype=params[i].data.dtype, order="C"), params[i].device)
        for i, st in new_state.items():
            missing = [k for k in expected[i] if k not in st]
            if missing and st["step"] > 0:
                raise ValueError(f"{name}: parameter {i} has saved state but no "
                                 f"{', '.join(f'state.{i}.{k}' for k in missing)} array")
        for g, group in zip(new_groups, self.param_groups):
            group.update(g)
        self.state = {id(params[i]): st for i, st in new_state.items()}

    def _group_index(self, index: int) -> int:
        """The group that holds parameter ``index`` (numbered over all groups)."""
        for k, g in enumerate(self.param_groups):
            if index < len(g["params"]):
                return k
            index -= len(g["params"])
        raise IndexError(index)

    def _state_arrays(self, group: dict) -> tuple:
        """Names of the arrays a parameter of ``group`` has once it has taken a step."""
        return ()

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            opts = ", ".join(f"{k}={v}" for k, v in g.items() if k not in ("params",
                                                                          "param_names"))
            n = sum(p.data.size for p in g["params"])
            lines.append(f"  group {i}: {len(g['params'])} tensors, {n} values, {opts}")
        return "\n".join(lines + [")"])


def _jsonable(v):
    """Plain Python types for JSON: tuples become lists, NumPy scalars Python numbers."""
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    raise TypeError(f"optimizer state: {type(v).__name__} value {v!r} cannot be saved as JSON")


def _check_number(opt, what: str, value, lo=None, hi=None, hi_open=False) -> float:
    """``value`` must be a finite real number in [lo, hi] (or [lo, hi) with ``hi_open``)."""
    name = type(opt).__name__
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: invalid {what}={value!r} (must be a number)")
    v = float(value)
    if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and (
            v > hi or (hi_open and v == hi))):
        rng = f"[{lo}, {hi}{')' if hi_open else ']'}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}: invalid {what}={value!r} (must be {rng})")
    return v
