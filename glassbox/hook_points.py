"""Hook points: named places in the forward pass where user functions run.

Mirrors ``transformer_lens.hook_points``. A :class:`HookPoint` is an identity
"module" carrying a list of forward hooks; a hook is called as
``fn(activation, hook=hook_point)`` and may edit the activation in place or
return a replacement of the same shape. Unlike TransformerLens the hook points do
not wrap torch modules: the C engine calls back into Python only at points that
have hooks (see :mod:`glassbox.HookedTransformer`).

:class:`HookedRootModule` provides the hook-management API of TransformerLens
(``add_hook``, ``hooks()``, ``run_with_hooks``, ``run_with_cache``, ``reset_hooks``…)
for any root that builds a tree of :class:`Module` objects and calls ``setup()``.
Backward hooks need autograd, which glassbox does not have: registering one raises
``NotImplementedError``.
"""
from __future__ import annotations

import difflib
import logging
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator, Literal, Optional, Sequence, Tuple, Union

NamesFilter = Optional[Union[Callable[[str], bool], Sequence[str], str]]
HookFunction = Callable[..., Any]


def _is_torch_module(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.nn.Module)


def _torch_children(mod: Any) -> Iterator[tuple[str, Any]]:
    """Children of a torch ``nn.Module`` in a glassbox tree: its registered submodules, then the
    glassbox modules (e.g. :class:`HookPoint`) kept as plain attributes."""
    seen = set()
    for key, value in mod._modules.items():
        if value is not None:
            seen.add(key)
            yield key, value
    for key, value in vars(mod).items():
        if key not in seen and not key.startswith("_") and isinstance(value, Module):
            yield key, value


def _named_modules_of(obj: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, Module):
        yield from obj.named_modules(prefix)
        return
    yield prefix, obj
    for key, child in _torch_children(obj):
        yield from _named_modules_of(child, f"{prefix}.{key}" if prefix else key)


class Module:
    """Minimal stand-in for ``torch.nn.Module``: attribute order defines the tree.

    A glassbox module may hold torch ``nn.Module`` children (as in a user's own
    :class:`HookedRootModule` subclass built from torch layers): they and the hook points inside
    them are part of the tree."""

    name: Optional[str] = None

    def named_children(self) -> Iterator[tuple[str, Any]]:
        for key, value in vars(self).items():
            if key.startswith("_"):
                continue
            if isinstance(value, Module) or _is_torch_module(value):
                yield key, value

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        yield prefix, self
        for key, child in self.named_children():
            yield from _named_modules_of(child, f"{prefix}.{key}" if prefix else key)

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def children(self) -> Iterator["Module"]:
        for _, m in self.named_children():
            yield m

    def extra_repr(self) -> str:
        """Text shown inside this module's parentheses in ``repr`` (as torch's ``extra_repr``)."""
        return ""

    def __repr__(self) -> str:
        """The module tree, torch style: ``Name(\n  (child): Child(...)\n)`` (what printing a
        TransformerLens model shows, hook points with their names)."""
        lines = [line for line in self.extra_repr().split("\n") if line]
        for key, child in self.named_children():
            text = repr(child).replace("\n", "\n  ")
            lines.append(f"({key}): {text}")
        name = type(self).__name__
        if not lines:
            return f"{name}()"
        if len(lines) == 1 and not list(self.named_children()):
            return f"{name}({lines[0]})"
        return name + "(\n  " + "\n  ".join(lines) + "\n)"


class ModuleList(Module):
    """Indexable list of modules (names ``"0"``, ``"1"``, …) like ``nn.ModuleList``."""

    def __init__(self, modules: Sequence[Module] = ()):
        self._items = list(modules)

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for i, m in enumerate(self._items):
            yield str(i), m

    def __getitem__(self, idx: Any) -> Any:
        if isinstance(idx, slice):
            return type(self)(self._items[idx])  # as torch: a slice keeps the list's class
        return self._items[idx]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._items)


class TypedModuleList(ModuleList):
    """The class of ``HookedTransformer.blocks``, as TransformerLens 3.9 names it
    (``transformer_lens.utilities.typed_module_list.TypedModuleList``, an ``nn.ModuleList`` of
    one module type): a :class:`ModuleList` in every respect, so that printing a model shows
    TransformerLens's text exactly."""


class _Handle:
    """Removable handle for one registered hook (plays torch's RemovableHandle)."""

    def __init__(self, hook_point: "HookPoint", direction: str):
        self._hook_point = hook_point
        self._direction = direction

    def remove(self) -> None:
        hooks = self._hook_point.fwd_hooks if self._direction == "fwd" else self._hook_point.bwd_hooks
        for i, h in enumerate(hooks):
            if h.hook is self:
                del hooks[i]
                break


@dataclass
class LensHandle:
    """A registered hook: its handle, permanence, context level and the user function."""

    hook: _Handle
    is_permanent: bool = False
    context_level: Optional[int] = None
    user_hook: Optional[Callable] = None


class HookPoint(Module):
    """A named activation site. ``name`` is set by the root's ``setup()``."""

    def __init__(self) -> None:
        self.fwd_hooks: list[LensHandle] = []
        self.bwd_hooks: list[LensHandle] = []
        self.ctx: dict = {}
        self.name: Optional[str] = None
        #: set by the root's ``setup()``: says why a hook may not be added right now (or None)
        self._refuse_add: Optional[Callable[[str], Optional[str]]] = None

    def named_children(self) -> Iterator[tuple[str, Module]]:
        return iter(())

    def extra_repr(self) -> str:
        bits = [f"name={self.name!r}"] if self.name is not None else []
        if self.fwd_hooks:
            bits.append(f"{len(self.fwd_hooks)} fwd")
        return ", ".join(bits)

    def add_perma_hook(self, hook: HookFunction, dir: Literal["fwd", "bwd"] = "fwd") -> None:
        self.add_hook(hook, dir=dir, is_permanent=True)

    def add_hook(
        self,
        hook: HookFunction,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        level: Optional[int] = None,
        prepend: bool = False,
        alias_names: Optional[list[str]] = None,
    ) -> None:
        """Register ``hook``; it runs as ``hook(activation, hook=self)`` on every forward."""
        if dir == "bwd":
            raise NotImplementedError(
                "glassbox has no autograd, so backward hooks are not supported "
                f"(tried to add one at {self.name!r})"
            )
        if dir != "fwd":
            raise ValueError(f"Invalid direction {dir}")
        if not callable(hook):
            raise TypeError(f"hook must be callable, got {type(hook).__name__}")
        if self._refuse_add is not None and self.name is not None:
            why = self._refuse_add(self.name)
            if why:
                raise RuntimeError(why)
        handle = LensHandle(_Handle(self, "fwd"), is_permanent, level, user_hook=hook)
        if prepend:
            self.fwd_hooks.insert(0, handle)
        else:
            self.fwd_hooks.append(handle)

    @staticmethod
    def _directions(dir: str) -> Tuple[str, ...]:
        """The hook-list attributes a ``dir`` of "fwd" / "bwd" / "both" selects."""
        if dir not in ("fwd", "bwd", "both"):
            raise ValueError(f"Invalid direction {dir}")
        return {"fwd": ("fwd_hooks",), "bwd": ("bwd_hooks",), "both": ("fwd_hooks", "bwd_hooks")}[dir]

    def has_hooks(
        self,
        dir: Literal["fwd", "bwd", "both"] = "both",
        including_permanent: bool = True,
        level: Optional[int] = None,
    ) -> bool:
        return any(
            (including_permanent or not h.is_permanent) and (level is None or h.context_level == level)
            for attr in self._directions(dir)
            for h in getattr(self, attr)
        )

    def remove_hooks(
        self,
        dir: Literal["fwd", "bwd", "both"] = "fwd",
        including_permanent: bool = False,
        level: Optional[int] = None,
    ) -> None:
        def keep(h: LensHandle) -> bool:
            if including_permanent:
                return False
            return h.is_permanent or (level is not None and h.context_level != level)

        for attr in self._directions(dir):
            setattr(self, attr, [h for h in getattr(self, attr) if keep(h)])

    def clear_context(self) -> None:
        self.ctx = {}

    def layer(self) -> int:
        """Block index parsed from ``blocks.{layer}.…`` (error for other names)."""
        if self.name is None:
            raise ValueError("Name cannot be None")
        return int(self.name.split(".")[1])

    def __call__(self, x: Any) -> Any:
        """Run the hooks on ``x`` in Python (used for ``hook_tokens``)."""
        return run_hook_functions(self, x)

    forward = __call__


def run_hook_functions(hook_point: HookPoint, x: Any, check_shape: bool = True) -> Any:
    """Call every forward hook of ``hook_point`` on ``x`` in order; a returned value
    replaces the activation for the next hooks. Returns the final activation."""
    shape = tuple(getattr(x, "shape", ()))
    for handle in list(hook_point.fwd_hooks):
        out = handle.user_hook(x, hook=hook_point)
        if out is not None:
            if check_shape:
                out_shape = tuple(getattr(out, "shape", ()))
                if out_shape != shape:
                    raise ValueError(
                        f"hook at {hook_point.name!r} returned an activation of shape "
                        f"{out_shape}, expected {shape}"
                    )
            x = out
    return x


def _make_names_filter(names_filter: NamesFilter) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda name: True
    if isinstance(names_filter, str):
        target = names_filter
        return lambda name: name == target
    if isinstance(names_filter, (list, tuple, set, frozenset)):
        allowed = set(names_filter)
        return lambda name: name in allowed
    if callable(names_filter):
        return names_filter
    raise ValueError("names_filter must be a string, list of strings, or function")


class HookedRootModule(Module):
    """Root of a module tree with TransformerLens's hook-management API.

    Hooks are global state on the model: ``run_with_hooks``/``run_with_cache`` and the
    ``hooks()`` context manager remove what they added, hooks added with ``add_hook``
    stay until ``reset_hooks()``.

    Threads: a model runs one forward pass (or one ``hooks()`` block, which ``run_with_hooks``
    and ``run_with_cache`` use) at a time. A second thread calling into the same model waits
    until the first is done, so each call sees exactly its own temporary hooks, plus the
    model-global ones added with ``add_hook`` (which every thread's runs see, as in
    TransformerLens). Hooks may run nested forwards on the same thread.
    """

    def __init__(self) -> None:
        self._run_lock = threading.RLock()
        self.is_caching = False
        self.context_level = 0
        self.mod_dict: dict[str, Module] = {}
        self.hook_dict: dict[str, HookPoint] = {}

    # the bookkeeping attributes are not children
    def named_children(self) -> Iterator[tuple[str, Any]]:
        for key, value in vars(self).items():
            if key.startswith("_") or key in ("mod_dict", "hook_dict"):
                continue
            if isinstance(value, Module) or _is_torch_module(value):
                yield key, value

    def setup(self) -> None:
        """Name every submodule and build ``mod_dict`` / ``hook_dict``."""
        self.mod_dict = {}
        self.hook_dict = {}
        for name, module in self.named_modules():
            if name == "":
                continue
            module.name = name
            self.mod_dict[name] = module
            if isinstance(module, HookPoint):
                self.hook_dict[name] = module
                module._refuse_add = self._refuse_hook_now

    def _refuse_hook_now(self, name: str) -> Optional[str]:
        """Why a hook added at ``name`` now would be silently skipped (None if it would not)."""
        return None

    def hook_points(self):
        return self.hook_dict.values()

    # -- lookup -------------------------------------------------------------------------------
    def _hook_point(self, name: str) -> HookPoint:
        hp = self.hook_dict.get(name)
        if hp is None:
            close = difflib.get_close_matches(name, list(self.hook_dict), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise KeyError(f"no hook point named {name!r}{hint}")
        return hp

    # -- removal -------------------------------------------------------------------------------
    def remove_all_hook_fns(
        self,
        direction: Literal["fwd", "bwd", "both"] = "both",
        including_permanent: bool = False,
        level: Optional[int] = None,
    ) -> None:
        for hp in self.hook_points():
            hp.remove_hooks(direction, including_permanent=including_permanent, level=level)

    def clear_contexts(self) -> None:
        for hp in self.hook_points():
            hp.clear_context()

    def reset_hooks(
        self,
        clear_contexts: bool = True,
        direction: Literal["fwd", "bwd", "both"] = "both",
        including_permanent: bool = False,
        level: Optional[int] = None,
    ) -> None:
        if clear_contexts:
            self.clear_contexts()
        self.remove_all_hook_fns(direction, including_permanent, level=level)
        self.is_caching = False

    # -- adding --------------------------------------------------------------------------------
    def check_hooks_to_add(
        self,
        hook_point: HookPoint,
        hook_point_name: str,
        hook: HookFunction,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        prepend: bool = False,
    ) -> None:
        """Override to veto hooks (HookedTransformer checks flag-gated points)."""

    def check_and_add_hook(
        self,
        hook_point: HookPoint,
        hook_point_name: str,
        hook: HookFunction,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        level: Optional[int] = None,
        prepend: bool = False,
    ) -> None:
        self.check_hooks_to_add(hook_point, hook_point_name, hook, dir=dir, is_permanent=is_permanent, prepend=prepend)
        hook_point.add_hook(hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def add_hook(
        self,
        name: Union[str, Callable[[str], bool]],
        hook: HookFunction,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        level: Optional[int] = None,
        prepend: bool = False,
    ) -> None:
        """Attach ``hook`` to the point ``name`` (or every point whose name satisfies the
        predicate ``name``). Stays until ``reset_hooks()`` (permanent: until
        ``reset_hooks(including_permanent=True)``)."""
        if isinstance(name, str):
            hp = self._hook_point(name)
            self.check_and_add_hook(hp, name, hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)
        else:
            for hp_name, hp in self.hook_dict.items():
                if name(hp_name):
                    self.check_and_add_hook(hp, hp_name, hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def add_perma_hook(
        self,
        name: Union[str, Callable[[str], bool]],
        hook: HookFunction,
        dir: Literal["fwd", "bwd"] = "fwd",
    ) -> None:
        self.add_hook(name, hook, dir=dir, is_permanent=True)

    def _enable_hook(self, name: Union[str, Callable], hook: Callable, dir: Literal["fwd", "bwd"]) -> None:
        # Context hooks are not checked against the flags (as in TransformerLens).
        if isinstance(name, str):
            self._hook_point(name).add_hook(hook, dir=dir, level=self.context_level)
        else:
            for hp_name, hp in self.hook_dict.items():
                if name(hp_name):
                    hp.add_hook(hook, dir=dir, level=self.context_level)

    @contextmanager
    def hooks(
        self,
        fwd_hooks: list = [],
        bwd_hooks: list = [],
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ):
        """Context manager adding temporary hooks; on exit removes the non-permanent hooks
        of this context level (if ``reset_hooks_end``).

        >>> with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", fn)]):
        ...     logits = model("Hello")
        """
        self._run_lock.acquire()
        try:
            self.context_level += 1
            for name, hook in fwd_hooks:
                self._enable_hook(name, hook, "fwd")
            for name, hook in bwd_hooks:
                self._enable_hook(name, hook, "bwd")
            yield self
        finally:
            try:
                if reset_hooks_end:
                    self.reset_hooks(clear_contexts, including_permanent=False, level=self.context_level)
                self.context_level -= 1
            finally:
                self._run_lock.release()

    def run_with_hooks(
        self,
        *model_args: Any,
        fwd_hooks: list = [],
        bwd_hooks: list = [],
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        **model_kwargs: Any,
    ) -> Any:
        """Run the forward pass with temporary hooks ``[(name_or_predicate, fn), …]``."""
        if len(bwd_hooks) > 0 and reset_hooks_end:
            logging.warning(
                "WARNING: Hooks will be reset at the end of run_with_hooks. This removes the "
                "backward hooks before a backward pass can occur."
            )
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts) as hooked:
            return hooked.forward(*model_args, **model_kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def run_with_cache(
        self,
        *model_args: Any,
        names_filter: NamesFilter = None,
        device: Any = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        pos_slice: Any = None,
        **model_kwargs: Any,
    ) -> tuple[Any, dict]:
        """Run ``forward`` with caching hooks on every hook point ``names_filter`` selects and
        return ``(output, cache)``, ``cache`` a dict ``{hook name: activation}`` in firing order
        (a model's own subclass, e.g. a small torch model with :class:`HookPoint` attributes;
        :class:`~glassbox.HookedTransformer` overrides this and returns an ActivationCache)."""
        cache, fwd, bwd = self.get_caching_hooks(names_filter, incl_bwd, device, remove_batch_dim=remove_batch_dim,
                                                 pos_slice=pos_slice)
        with self.hooks(fwd_hooks=fwd, bwd_hooks=bwd, reset_hooks_end=reset_hooks_end, clear_contexts=clear_contexts):
            out = self(*model_args, **model_kwargs)
        return out, cache

    # -- caching -------------------------------------------------------------------------------
    def get_caching_hooks(
        self,
        names_filter: NamesFilter = None,
        incl_bwd: bool = False,
        device: Any = None,
        remove_batch_dim: bool = False,
        cache: Optional[dict] = None,
        pos_slice: Any = None,
    ) -> tuple[dict, list, list]:
        """Hooks that store activations into ``cache`` (not attached). Returns
        ``(cache, fwd_hooks, bwd_hooks)``."""
        from glassbox.utils import Slice

        if incl_bwd:
            raise NotImplementedError("glassbox has no autograd: incl_bwd=True is not supported")
        if cache is None:
            cache = {}
        pos_slice = Slice.unwrap(pos_slice)
        keep = _make_names_filter(names_filter)
        self.is_caching = True

        def save_hook(tensor: Any, hook: HookPoint) -> None:
            cache[hook.name] = _store_activation(tensor, hook.name, remove_batch_dim, pos_slice, device)

        fwd = [(name, save_hook) for name in self.hook_dict if keep(name)]
        return cache, fwd, []

    def add_caching_hooks(
        self,
        names_filter: NamesFilter = None,
        incl_bwd: bool = False,
        device: Any = None,
        remove_batch_dim: bool = False,
        cache: Optional[dict] = None,
    ) -> dict:
        """Attach caching hooks that persist until ``reset_hooks()``; returns the dict they fill."""
        cache, fwd, _ = self.get_caching_hooks(names_filter, incl_bwd, device, remove_batch_dim, cache)
        for name, fn in fwd:
            self.hook_dict[name].add_hook(fn, "fwd")
        return cache

    def cache_all(self, cache: Optional[dict], incl_bwd: bool = False, device: Any = None, remove_batch_dim: bool = False) -> None:
        logging.warning("cache_all is deprecated and will eventually be removed, use add_caching_hooks or run_with_cache")
        self.add_caching_hooks(None, incl_bwd, device, remove_batch_dim, cache)

    def cache_some(self, cache: Optional[dict], names: Callable[[str], bool], incl_bwd: bool = False, device: Any = None, remove_batch_dim: bool = False) -> None:
        logging.warning("cache_some is deprecated and will eventually be removed, use add_caching_hooks or run_with_cache")
        self.add_caching_hooks(names, incl_bwd, device, remove_batch_dim, cache)

    def list_hooks(
        self,
        name_filter: NamesFilter = None,
        dir: Literal["fwd", "bwd", "both"] = "both",
        including_permanent: bool = True,
    ) -> dict[str, list[LensHandle]]:
        """Attached hooks grouped by hook-point name (points without hooks omitted)."""
        keep = _make_names_filter(name_filter)
        out: dict[str, list[LensHandle]] = {}
        for name, hp in self.hook_dict.items():
            if not keep(name):
                continue
            handles: list[LensHandle] = []
            if dir in ("fwd", "both"):
                handles += hp.fwd_hooks
            if dir in ("bwd", "both"):
                handles += hp.bwd_hooks
            if not including_permanent:
                handles = [h for h in handles if not h.is_permanent]
            if handles:
                out[name] = handles
        return out


_HEAD_POS3 = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_result")


def _store_activation(tensor: Any, name: str, remove_batch_dim: bool, pos_slice: Any, device: Any) -> Any:
    """What a caching hook stores: detached, batch dim removed, pos-sliced (TL rules:
    the position axis is -3 for per-head q/k/v/z/result, -2 otherwise)."""
    from glassbox.arrays import is_torch

    x = tensor
    if is_torch(x):
        x = x.detach()
        if device is not None:
            x = x.to(device)
    if remove_batch_dim:
        x = x[0]
    if pos_slice is not None and pos_slice.mode != "identity":
        pos_dim = -3 if name.endswith(_HEAD_POS3) else -2
        if x.ndim >= -pos_dim:
            x = pos_slice.apply(x, dim=pos_dim)
    return x
