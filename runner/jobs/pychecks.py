"""`python:` checks: finding the user's function when the job file loads, and loading it safely later.

At load time (`resolve`) the reference `checks/refund.py:fn` (relative to the job file) or
`package.module:fn` becomes a plain, JSON-able description carried by the task:

    {"function": as written, "name": "fn", "root": the job file's folder (absolute),
     "path": the file relative to root   (a file, or a module whose file lies under root), or
     "module": "package.module"          (a module outside the job's folder), and
     "sha256": the file's content hash}

and the function is loaded once (`runner validate` reports a missing file or function, or a wrong
signature, as `PATH:LINE`). A worker (`load_function`) never imports a module the payload names:

* a file is read from `root/path` only if it lies inside `root` (no `..`, no symlink out), its
  bytes hash to `sha256`, and those same bytes are compiled and run as a private module (not on
  `sys.path`, not under a name the payload chose); the function must be defined in that file;
* a module outside the job's folder is imported only when its top-level package is listed in the
  worker's own `RUNNER_CHECK_PACKAGES`, and only if its file still hashes to `sha256`.

Anything else is refused with a `PythonCheckError`, which fails that check (never the worker).
Tool outputs computed by a function (`runner.jobs.tooloutputs`, called `fn(arguments, ctx)`) are
resolved and loaded the same way (`call=` names their signature in errors).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import threading
import types
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from runner.errors import RunnerError

PythonCheck = Callable[[Any, Any], Any]
CHECK_CALL = "fn(reply, ctx)"
"""How a python check is called; `call=` names another two-argument use (a tool output's)."""


class PythonCheckError(RunnerError):
    """A python check that cannot be found, loaded, trusted or called as `fn(reply, ctx)`."""


_lock = threading.Lock()
_loaded: dict[tuple[str, str, str], PythonCheck] = {}  # (file or module, sha256, name) -> function


def _split(ref: str) -> tuple[str, str]:
    target, _, name = ref.rpartition(":")
    if not target or not name.isidentifier():
        raise PythonCheckError(f"expected `file.py:function` or `module:function`, got {ref!r}")
    return target, name


def _inside(file: Path, root: Path) -> bool:
    return file.is_relative_to(root)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def resolve(ref: str, root: Path, call: str = CHECK_CALL) -> dict[str, Any]:
    """The task's description of `ref` (see the module doc); loads the function once to check it."""
    target, name = _split(ref)
    root = root.resolve()
    desc: dict[str, Any] = {"function": ref, "name": name, "root": str(root)}
    if target.endswith(".py") or "/" in target or "\\" in target:
        file = (root / target).resolve()
        if not _inside(file, root):
            raise PythonCheckError(f"{target} is outside the job file's folder ({root}); workers load none")
        if not file.is_file():
            raise PythonCheckError(f"file not found: {root / target}")
    else:
        try:
            spec = importlib.util.find_spec(target)
        except (ImportError, ValueError) as e:
            raise PythonCheckError(f"cannot import {target}: {e}") from None
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise PythonCheckError(f"no Python module {target!r} (as a file: write path/to/file.py:{name})")
        file = Path(spec.origin).resolve()
        if not _inside(file, root):
            desc["module"] = target
    if "module" not in desc:
        desc["path"] = file.relative_to(root).as_posix()
    desc["sha256"] = _sha256(file.read_bytes())
    load_function(desc, allowed_packages=None, call=call)
    return desc


def load_function(
    desc: dict[str, Any], allowed_packages: Collection[str] | None, call: str = CHECK_CALL
) -> PythonCheck:
    """The check's function, loaded as the module doc says; `allowed_packages` None: any module
    (the job file's own machine, at load time)."""
    name, sha = str(desc.get("name") or ""), str(desc.get("sha256") or "")
    if "module" in desc:
        module_name = str(desc["module"])
        top = module_name.partition(".")[0]
        if allowed_packages is not None and top not in allowed_packages:
            raise PythonCheckError(
                f"{desc.get('function')}: package {top!r} is not in this worker's RUNNER_CHECK_PACKAGES"
            )
        key = (module_name, sha, name)
    else:
        root = Path(str(desc.get("root") or "")).resolve()
        file = (root / str(desc.get("path") or "")).resolve()
        if not desc.get("root") or not desc.get("path") or not _inside(file, root) or file == root:
            raise PythonCheckError(f"{desc.get('function')}: the file must lie inside the job file's folder")
        key = (str(file), sha, name)
    with _lock:
        fn = _loaded.get(key)
        if fn is None:
            fn = _loaded[key] = _load(desc, key[0], sha, name, call)
    return fn


def _load(desc: dict[str, Any], where: str, sha: str, name: str, call: str) -> PythonCheck:
    shown = desc.get("function")
    if "module" in desc:
        try:
            module = importlib.import_module(where)
        except Exception as e:
            raise PythonCheckError(f"{shown}: cannot import {where}: {type(e).__name__}: {e}") from None
        origin = getattr(module, "__file__", None)
        data = Path(origin).read_bytes() if origin else b""
        if _sha256(data) != sha:
            raise PythonCheckError(
                f"{shown}: {origin} changed since the job was loaded (content hash differs)"
            )
    else:
        try:
            data = Path(where).read_bytes()
        except OSError as e:
            raise PythonCheckError(
                f"{shown}: cannot read {where} on this machine: {e.strerror or e}"
            ) from None
        if _sha256(data) != sha:
            raise PythonCheckError(
                f"{shown}: {where} changed since the job was loaded (content hash differs)"
            )
        # The bytes just hashed are the bytes run: no second read for the file to change in between.
        module = types.ModuleType(f"runner_check_{sha[:16]}")
        module.__file__ = where
        try:
            exec(compile(data, where, "exec"), module.__dict__)
        except Exception as e:
            raise PythonCheckError(f"{shown}: loading {where} raised {type(e).__name__}: {e}") from None
    fn = getattr(module, name, None)
    if fn is None:
        raise PythonCheckError(f"{shown}: no function {name!r} in {where}")
    if not callable(fn):
        raise PythonCheckError(f"{shown}: {name!r} is not a function")
    if "module" not in desc and getattr(fn, "__module__", None) != module.__name__:
        raise PythonCheckError(f"{shown}: {name!r} must be defined in {where}, not imported into it")
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError:
        raise PythonCheckError(f"{shown}: {name} must take two arguments, {call}") from None
    except ValueError:
        pass  # a builtin without a signature: it will tell when called
    return fn


def forget() -> None:
    """Drop every loaded check (tests; a long-lived process seeing new versions under new hashes)."""
    with _lock:
        _loaded.clear()
