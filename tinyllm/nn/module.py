"""``Module``: a container of parameters and sub-modules, as in PyTorch.

Assigning a ``Parameter`` or a ``Module`` to an attribute registers it, so
``named_parameters()`` can walk the tree and give every parameter a dotted name
(``transformer.h.0.attn.c_attn.weight``). A parameter reachable under two names (a tied
head) is listed once, under the first name met.

The containers: ``ModuleList`` (a list), ``Sequential`` (modules called in order) and
``ModuleDict`` (by key); their children are named "0", "1", ... or by key, so parameter names
match PyTorch's ("0.weight", "enc.bias"). The tree is walked as PyTorch walks it:
``modules()`` / ``named_modules()`` depth first, ``children()`` one level, ``apply(fn)``
children before parents.

Devices: ``model.to("cuda")`` moves every parameter (and its ``.grad``) in place: the same
Parameter objects get new ``.data``, so an optimiser built before or after holds them still
(its states follow the parameters at its next step). ``state_dict()`` always gives host
(NumPy) arrays, so checkpoints are written from host copies; ``load_state_dict`` copies host
arrays onto the parameters' device.
"""
from __future__ import annotations

import fnmatch
from typing import Iterator

import numpy as np

from .. import backend
from ..autograd import Tensor
from ..errors import ShapeError


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimiser updates (requires_grad by default)."""

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class Module:
    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() before "
                               f"assigning attributes")
        params, mods = self._parameters, self._modules
        params.pop(name, None)
        mods.pop(name, None)
        if isinstance(value, Parameter):
            params[name] = value
        elif isinstance(value, Module):
            mods[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        object.__delattr__(self, name)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------ walking the tree
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """(dotted name, module) of this module ("") and every module below it, each once,
        depth first in registration order (a parent before its children), as in PyTorch."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            for child, sub in reversed(list(m._modules.items())):
                stack.append((f"{name}.{child}" if name else child, sub))

    def get_submodule(self, target: str) -> "Module":
        """The module at a dotted path (``"encoder.layer.0.attention"``; ``""`` is this
        module), as PyTorch's ``get_submodule``. KeyError naming the first part not found."""
        m = self
        for i, part in enumerate(target.split(".") if target else []):
            if part not in m._modules:
                where = ".".join(target.split(".")[:i]) or type(self).__name__
                raise KeyError(f"get_submodule: {target!r}: {where} has no sub-module "
                               f"{part!r} (it has {', '.join(m._modules) or 'none'})")
            m = m._modules[part]
        return m

    def set_submodule(self, target: str, module: "Module") -> None:
        """Replace the existing sub-module at a dotted path by ``module``, in its place: its
        position among its siblings (so parameter order, a Sequential's call order, a
        ModuleList's index) is kept. KeyError when no module is there."""
        if not isinstance(module, Module):
            raise TypeError(f"set_submodule: {target!r}: expected a Module, got "
                            f"{type(module).__name__}")
        if not target:
            raise KeyError("set_submodule: the target path is empty (cannot replace the root)")
        parent_path, _, name = target.rpartition(".")
        parent = self.get_submodule(parent_path)
        if name not in parent._modules:
            raise KeyError(f"set_submodule: {target!r}: {parent_path or type(self).__name__} "
                           f"has no sub-module {name!r}")
        parent._modules[name] = module                # same key: dict order is kept
        object.__setattr__(parent, name, module)
        if isinstance(parent, ModuleList):
            parent._items[int(name)] = module          # its children are named "0", "1", ...

    def modules(self) -> Iterator["Module"]:
        """This module and every module below it, each once (as PyTorch's ``modules()``)."""
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        """(name, module) of the direct sub-modules, in the order they were assigned."""
        seen = set()
        for name, m in self._modules.items():
            if id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self) -> Iterator["Module"]:
        """The direct sub-modules (not their sub-modules: ``modules()`` walks the tree)."""
        for _, m in self.named_children():
            yield m

    def apply(self, fn) -> "Module":
        """Call ``fn(m)`` on every sub-module, children before their parent, then on this
        module; returns this module. The usual use is an initialiser::

            def init(m):
                if isinstance(m, tl.nn.Linear):
                    m.weight.data[...] = rng.normal(0, 0.02, m.weight.shape)
            model.apply(init)
        """
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Set ``requires_grad`` on every parameter (False freezes the whole module; a frozen
        parameter's ``.grad`` is cleared); returns this module. ``freeze(pattern)`` does it by
        name."""
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
            if not requires_grad:
                p.grad = None
        return self

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter) pairs, each parameter once."""
        seen = set()
        for mname, m in self._walk(""):
            for pname, p in m._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mname}.{pname}" if mname else pname), p

    def _walk(self, prefix):
        # depth-first in registration order, so names follow the order modules were assigned
        yield prefix, self
        for child, sub in self._modules.items():
            yield from sub._walk(f"{prefix}.{child}" if prefix else child)

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def num_parameters(self, trainable_only: bool = False) -> int:
        return int(sum(p.data.size for p in self.parameters()
                       if p.requires_grad or not trainable_only))

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        """name -> the parameter's array (not a copy; copy it if you will mutate it). On cuda:
        a host copy of it."""
        return {name: backend.to_host(p.data) for name, p in self.named_parameters()}

    def to(self, device: str) -> "Module":
        """Move every parameter and its ``.grad`` to ``device`` ("cpu" or "cuda") in place
        (the same Parameter objects); returns self."""
        device = backend.check_device(device, f"{type(self).__name__}.to")
        if device == "cuda":
            backend.require_cuda(f"{type(self).__name__}.to('cuda')")
        for _, p in self.named_parameters():
            p.data = backend.to_device(p.data, device)
            if p.grad is not None:
                p.grad = backend.to_device(p.grad, device)
        return self

    @property
    def device(self) -> str:
        """The device of the first parameter ("cpu" for a module without any)."""
        for _, p in self.named_parameters():
            return p.device
        return "cpu"

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into the parameters in place (their dtype is kept). Missing or
        unexpected names (when ``strict``) and shape mismatches raise, naming them; nothing is
        changed unless every check passes."""
        own = dict(self.named_parameters())
        missing = [n for n in own if n not in state]
        unexpected = [n for n in state if n not in own]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing[:5])}"
                             + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
            if unexpected:
                parts.append(f"unexpected {', '.join(unexpected[:5])}"
                             + (f" and {len(unexpected) - 5} more"
                                if len(unexpected) > 5 else ""))
            raise KeyError(f"load_state_dict: {type(self).__name__}: {'; '.join(parts)}")
        for name, p in own.items():
            if name in state:
                arr = backend.to_host(state[name])
                arr = arr if backend.is_array(arr) else np.asarray(arr)
                if arr.shape != p.data.shape:
                    raise ShapeError(f"load_state_dict: {name} has shape {arr.shape} in the "
                                     f"state but {p.data.shape} in the model")
                if arr.dtype.kind not in "fiu":
                    raise TypeError(f"load_state_dict: {name} has dtype {arr.dtype}")
        for name, p in own.items():
            if name in state:
                arr = backend.to_host(state[name])
                p.data[...] = backend.to_device(np.asarray(arr, dtype=p.data.dtype), p.device)

    # ------------------------------------------------------------ modes and grads
    def train(self, mode: bool = True) -> "Module":
        for _, m in self.named_modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def _match(self, patterns) -> list[str]:
        if isinstance(patterns, str):
            patterns = [patterns]
        names = [n for n, _ in self.named_parameters()]
        hit = [n for n in names if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]
        if not hit:
            raise KeyError(f"no parameter matches {list(patterns)}; names look like "
                           f"{', '.join(names[:3])}")
        return hit

    def freeze(self, patterns="*") -> list[str]:
        """Stop gradients for parameters whose name matches a glob pattern (``"*.ln_*"``);
        returns the names frozen."""
        names = self._match(patterns)
        own = dict(self.named_parameters())
        for n in names:
            own[n].requires_grad = False
            own[n].grad = None
        return names

    def unfreeze(self, patterns="*") -> list[str]:
        names = self._match(patterns)
        own = dict(self.named_parameters())
        for n in names:
            own[n].requires_grad = True
        return names

    def __repr__(self):
        """The tree of sub-modules, one per line, as PyTorch prints it."""
        if not self._modules:
            return f"{type(self).__name__}()"
        lines = [f"{type(self).__name__}("]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines + [")"])


class ModuleList(Module):
    """A list of sub-modules, registered under "0", "1", ..."""

    def __init__(self, modules=()):
        super().__init__()
        self._items = []
        for m in modules:
            self.append(m)

    def append(self, m: Module) -> None:
        setattr(self, str(len(self._items)), m)
        self._items.append(m)

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)

    def __getitem__(self, i):
        return self._items[i]


class Sequential(Module):
    """Modules called in order, each on the previous one's output:
    ``Sequential(Linear(2, 8), ReLU(), Linear(8, 1))``. Registered under "0", "1", ... (so
    parameters are named "0.weight", "2.bias", as in PyTorch), or under the keys of a dict
    passed as the one argument: ``Sequential({"fc": Linear(2, 8), "act": ReLU()})``.
    Indexing gives a module (``seq[0]``) or, with a slice, a Sequential of the same modules.
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], dict):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, m in items:
            _check_child("Sequential", name, m)
            setattr(self, name, m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def append(self, m: Module) -> "Sequential":
        _check_child("Sequential", str(len(self)), m)
        setattr(self, str(len(self._modules)), m)
        return self

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, i):
        mods = list(self._modules.items())
        if isinstance(i, slice):
            return Sequential(dict(mods[i]))
        try:
            return mods[i][1]
        except (IndexError, TypeError):
            raise IndexError(f"Sequential: index {i!r} out of range for {len(mods)} "
                             f"modules") from None


class ModuleDict(Module):
    """Sub-modules by name, like a dict: ``d["enc"]``, ``d["dec"] = Linear(4, 4)``, ``"enc" in
    d``, ``keys()``, ``items()``. Parameters are named "<key>.weight" and so on, as in PyTorch.
    Keys are strings without dots; a ModuleDict has no forward of its own."""

    def __init__(self, modules: dict | None = None):
        super().__init__()
        for k, m in (modules or {}).items():
            self[k] = m

    def __setitem__(self, key: str, m: Module) -> None:
        _check_child("ModuleDict", key, m)
        if isinstance(key, str) and key not in self._modules and (
                key in self.__dict__ or hasattr(type(self), key)):
            raise KeyError(f"ModuleDict: key {key!r} would shadow the attribute of that name")
        setattr(self, key, m)

    def __getitem__(self, key: str) -> Module:
        try:
            return self._modules[key]
        except KeyError:
            raise KeyError(f"ModuleDict: no module {key!r}; keys are "
                           f"{', '.join(self._modules) or 'none'}") from None

    def __delitem__(self, key: str) -> None:
        self[key]
        delattr(self, key)

    def __contains__(self, key) -> bool:
        return key in self._modules

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()


def _check_child(where: str, name, m) -> None:
    if not isinstance(m, Module):
        raise TypeError(f"{where}: {name!r} must be a Module, got {type(m).__name__}")
    if not isinstance(name, str) or not name or "." in name:
        raise KeyError(f"{where}: a module name must be a non-empty string without dots, "
                       f"got {name!r}")
