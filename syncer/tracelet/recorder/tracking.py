"""Redirect other TensorBoard writers into the active run while an experiment is active.

* ``torch.utils.tensorboard.SummaryWriter()`` / ``tensorboardX.SummaryWriter()`` created
  **without** a log dir write into the run directory (and flush as often as the run's own
  writer); one created **with** its own log dir is left alone and listed in the manifest's
  ``linked_logdirs``.
* Lightning's ``TensorBoardLogger`` (``lightning.pytorch.loggers`` and
  ``pytorch_lightning.loggers``) writes into the run directory: its ``save_dir``/``name``/
  ``version`` are replaced, so ``logger.log_dir`` *is* the run (checkpoints land in
  ``<run>/checkpoints``).

Patching wraps the classes' ``__init__`` (so subclasses and every import path see it) and is
undone at ``stop_logging``. A framework not imported yet is patched when it is imported (a
post-import hook on ``sys.meta_path``): starting a run never imports torch or Lightning.
"""
from __future__ import annotations

import functools
import importlib.abc
import inspect
import logging
import os
import sys
from typing import Any, Callable

log = logging.getLogger("tracelet.recorder")

# module that defines the class -> (class name, kind)
WRITER_TARGETS = {
    "torch.utils.tensorboard.writer": ("SummaryWriter", ("log_dir",)),
    "tensorboardX.writer": ("SummaryWriter", ("logdir", "log_dir")),
}
LIGHTNING_TARGETS = {
    "lightning.pytorch.loggers.tensorboard": "TensorBoardLogger",
    "pytorch_lightning.loggers.tensorboard": "TensorBoardLogger",
}
_ORIGINAL = "__tracelet_original__"


class FrameworkPatches:
    """Patches for one experiment; :meth:`install` at start, :meth:`uninstall` at stop."""

    def __init__(self, experiment: Any, writers: bool, lightning: bool):
        self._exp = experiment
        self._callbacks: dict[str, Callable[[Any], None]] = {}
        if writers:
            for mod, (cls, params) in WRITER_TARGETS.items():
                self._callbacks[mod] = functools.partial(self._patch_writer, cls_name=cls, dir_params=params)
        if lightning:
            for mod, cls in LIGHTNING_TARGETS.items():
                self._callbacks[mod] = functools.partial(self._patch_lightning, cls_name=cls)
        self._patched: list[type] = []
        self._hook: _PostImportHook | None = None

    def install(self) -> None:
        pending = {}
        for name, patch in self._callbacks.items():
            module = sys.modules.get(name)
            if module is not None:
                _safely(patch, module)
            else:
                pending[name] = patch
        if pending:
            self._hook = _PostImportHook(pending)
            sys.meta_path.insert(0, self._hook)

    def uninstall(self) -> None:
        if self._hook is not None:
            try:
                sys.meta_path.remove(self._hook)
            except ValueError:
                pass
            self._hook = None
        for cls in self._patched:
            original = cls.__dict__["__init__"].__dict__.get(_ORIGINAL)
            if original is not None:
                cls.__init__ = original
        self._patched.clear()

    # -- the patches ----------------------------------------------------------------------
    def _wrap_init(self, cls: type, rewrite: Callable[[inspect.BoundArguments], None]) -> None:
        original = cls.__dict__["__init__"]
        if _ORIGINAL in original.__dict__:
            return  # already patched (by this experiment, or one that failed to unpatch)
        signature = inspect.signature(original)
        exp = self._exp

        @functools.wraps(original)
        def __init__(self_, *args: Any, **kwargs: Any) -> None:
            if exp.is_active:
                try:
                    bound = signature.bind(self_, *args, **kwargs)
                except TypeError:
                    bound = None  # let the original raise its own error
                if bound is not None:
                    rewrite(bound)
                    return original(*bound.args, **bound.kwargs)
            return original(self_, *args, **kwargs)

        setattr(__init__, _ORIGINAL, original)
        cls.__init__ = __init__
        self._patched.append(cls)

    def _patch_writer(self, module: Any, cls_name: str, dir_params: tuple[str, ...]) -> None:
        exp = self._exp

        def rewrite(bound: inspect.BoundArguments) -> None:
            given = next((bound.arguments[p] for p in dir_params if bound.arguments.get(p)), None)
            if given is None:
                bound.arguments[dir_params[0]] = str(exp.run_dir)
                bound.arguments.setdefault("flush_secs", exp.flush_interval_s)
            elif not _same_dir(given, exp.run_dir):
                exp.link_logdir(os.fspath(given))

        self._wrap_init(getattr(module, cls_name), rewrite)

    def _patch_lightning(self, module: Any, cls_name: str) -> None:
        exp = self._exp

        def rewrite(bound: inspect.BoundArguments) -> None:
            log.info("tracelet: %s(save_dir=%r) writes into the run %s instead", cls_name,
                     bound.arguments.get("save_dir"), exp.run_dir)
            bound.arguments["save_dir"] = str(exp.run_dir)
            bound.arguments["name"] = ""
            bound.arguments["version"] = ""

        self._wrap_init(getattr(module, cls_name), rewrite)


def _same_dir(a: Any, b: Any) -> bool:
    return os.path.realpath(os.fspath(a)) == os.path.realpath(os.fspath(b))


def _safely(patch: Callable[[Any], None], module: Any) -> None:
    try:
        patch(module)
    except Exception as e:  # a framework version we do not know: tracking is lost, training is not
        log.warning("tracelet: cannot patch %s (%s: %s); its writers are not redirected",
                    getattr(module, "__name__", module), type(e).__name__, e)


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Run ``patch(module)`` right after one of the watched modules is first imported."""

    def __init__(self, patches: dict[str, Callable[[Any], None]]):
        self._patches = patches

    def find_spec(self, fullname: str, path: Any, target: Any = None):
        patch = self._patches.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _PatchingLoader(spec.loader, patch)
        return spec


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, patch: Callable[[Any], None]):
        self._loader = loader
        self._patch = patch

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        _safely(self._patch, module)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, get_code ...
        return getattr(self._loader, name)
