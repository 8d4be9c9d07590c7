"""A faster cold start for the command line: import only what a render runs.

Importing diffusers runs a few package ``__init__`` files that import every model of their
family (``diffusers.models.transformers`` alone imports about sixty transformer models, and
``unets`` and ``autoencoders`` the same for theirs), and ``torch._dynamo``, the compiler's
frontend, is imported by decorators at class-definition time (``torch._dynamo.allow_in_graph``,
``torch.compiler.disable``) although nothing in a videodiff process compiles. Together they are
about half of the import time of ``videodiff render`` (``python -X importtime``). ``transformers.models``'s
``__init__`` scans the folder of every model transformers has to build its lazy module; the CLIP classes
are imported as submodules without it.

:func:`install` puts a finder on ``sys.meta_path`` that imports these packages *deferred*: the package object exists
(with its real ``__path__``, so ``import diffusers.models.unets.unet_2d_condition`` finds its
module as usual), but its ``__init__`` runs only when something reads an attribute it would have
defined. The deferred ``torch._dynamo`` answers the three decorators used at import time in
eager-mode form (``allow_in_graph`` is replayed on the real module if it is ever loaded;
``disable`` and ``assume_constant_result`` only change behaviour inside ``torch.compile``, which
a videodiff process never runs) and loads itself in full on any other use.

Only the CLI installs it (the process is ours); a library user's process is left alone.
``VIDEODIFF_EAGER_IMPORTS=1`` turns it off. This module imports nothing of the package.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from collections.abc import Callable
from typing import Any

#: packages whose ``__init__`` imports a whole family of models that videodiff does not use
DEFERRED_PACKAGES = (
    "diffusers.models.transformers",
    "diffusers.models.unets",
    "diffusers.models.autoencoders",
    # its __init__ reads every model folder of transformers to build a lazy module (about 0.3 s of CPU time
    # on the development machine); CLIP's modules import as submodules without it
    "transformers.models",
)


class _DeferredLoader(importlib.abc.Loader):
    """Runs the real loader of a package only when an attribute of the package is first read."""

    def __init__(self, real: importlib.machinery.ModuleSpec, predefined: dict[str, Any],
                 after: Callable[[types.ModuleType], None] | None) -> None:
        self.real, self.predefined, self.after = real, predefined, after

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        real, predefined, after = self.real, self.predefined, self.after
        name = module.__name__

        def __getattr__(attr: str) -> Any:  # noqa: N807 - PEP 562's module-level hook
            if attr.startswith("__") and attr.endswith("__"):
                raise AttributeError(attr)
            if module.__dict__.get("__getattr__") is not __getattr__:
                raise AttributeError(f"module {name!r} has no attribute {attr!r}")
            del module.__dict__["__getattr__"]
            for key in predefined:
                module.__dict__.pop(key, None)
            module.__spec__ = real
            module.__loader__ = real.loader
            real.loader.exec_module(module)
            if after is not None:
                after(module)
            return getattr(module, attr)

        module.__dict__["__getattr__"] = __getattr__
        module.__dict__.update(predefined)


class _DeferringFinder(importlib.abc.MetaPathFinder):
    """Answers the first import of each deferred package with a :class:`_DeferredLoader`."""

    def __init__(self, targets: dict[str, tuple[dict[str, Any], Any]]) -> None:
        self.targets = targets

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.targets:
            return None
        predefined, after = self.targets.pop(fullname)
        real = importlib.machinery.PathFinder.find_spec(fullname, path)
        if real is None or real.submodule_search_locations is None or real.loader is None:
            return real
        spec = importlib.util.spec_from_loader(fullname, _DeferredLoader(real, predefined, after),
                                               origin=real.origin, is_package=True)
        spec.submodule_search_locations = real.submodule_search_locations
        spec.has_location = real.has_location
        return spec


def _dynamo_stand_ins() -> tuple[dict[str, Any], Callable[[types.ModuleType], None]]:
    replay: list[Any] = []

    def allow_in_graph(fn: Any) -> Any:
        replay.append(fn)
        return fn

    def disable(fn: Any = None, recursive: bool = True, **_: Any) -> Any:
        return fn if fn is not None else (lambda f: f)

    def after(real: types.ModuleType) -> None:
        for fn in replay:
            real.allow_in_graph(fn)

    return {"allow_in_graph": allow_in_graph, "disable": disable,
            "assume_constant_result": lambda fn: fn}, after


_installed: _DeferringFinder | None = None


def install() -> bool:
    """Defer the packages above (a finder on ``sys.meta_path``; imports nothing); False if turned off."""
    global _installed
    if os.environ.get("VIDEODIFF_EAGER_IMPORTS", "") not in ("", "0"):
        return False
    if _installed is not None:
        return True
    targets: dict[str, tuple[dict[str, Any], Any]] = {
        name: ({}, None) for name in DEFERRED_PACKAGES if name not in sys.modules}
    if "torch._dynamo" not in sys.modules:
        targets["torch._dynamo"] = _dynamo_stand_ins()
    _installed = _DeferringFinder(targets)
    sys.meta_path.insert(0, _installed)
    return True


def exit_now(code: object) -> None:
    """End the process with ``code`` (a ``SystemExit`` code) without the interpreter's teardown.

    Tearing down a process that imported torch, diffusers and transformers (clearing every module,
    collecting their objects) takes about 0.85 s on the project's 2-core machine, idle (``exit`` in
    ``videodiff bench coldstart``), more under load. Nothing of it is needed once a command has
    returned: its files are written, closed and moved into place. The ``atexit`` handlers still run
    (logging's flush, temporary folders' clean-up, finalizers registered with ``weakref.finalize``),
    then standard output and error are flushed and the process ends. Returns without doing anything
    (the caller then exits as usual) when another non-daemon thread is still running (Python waits
    for those), when ``code`` is not an exit status (``sys.exit("message")``), or with
    ``VIDEODIFF_EAGER_IMPORTS=1``.
    """
    import atexit
    import threading

    if os.environ.get("VIDEODIFF_EAGER_IMPORTS", "") not in ("", "0"):
        return
    if code is not None and not isinstance(code, int):
        return
    if any(not t.daemon for t in threading.enumerate() if t is not threading.current_thread()):
        return  # Python would wait for it
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # a closed or broken pipe: nothing more to say
            pass
    os._exit(code or 0)

