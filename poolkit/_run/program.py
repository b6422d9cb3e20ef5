"""``python -m poolkit run``: run a program with poolkit as its ``ProcessPoolExecutor``.

::

    python -m poolkit run [--start-method M] script.py [args...]
    python -m poolkit run [--start-method M] -m package.module [args...]

The program runs as ``python script.py args...`` (or ``python -m package.module args...``)
would run it: as ``__main__``, with the same ``sys.argv``, ``sys.path[0]`` and exit code.
Before its first module loads, :func:`poolkit._run.patch.install` puts poolkit in the
stdlib's place, in this process and in its spawn and forkserver children. At exit one line
on stderr says what poolkit ran.
"""

from __future__ import annotations

import atexit
import os
import runpy
import sys
import types
from typing import Any, NoReturn, Optional

from poolkit._run import patch as patch

USAGE = """\
usage: {prog} [--start-method METHOD] (script.py | -m module) [args...]

Run a program with concurrent.futures.ProcessPoolExecutor replaced by poolkit.Executor,
in the program and in its worker processes. At exit, one line on stderr says how many
tasks poolkit ran, with which start method, and how many worker crashes the pools survived.

options:
  --start-method METHOD  fork, spawn or forkserver for every pool that does not choose
                         one itself (mp_context=...); default: poolkit's default
  -h, --help             show this help
"""


class UsageError(Exception):
    """The command line of ``run`` is wrong (exit code 2)."""


def parse(args: list[str]) -> tuple[Optional[str], Optional[str], Optional[str], list[str]]:
    """``(start_method, script, module, program_args)``; options end at the program.

    Raises:
        UsageError: no program, an unknown option, or an option without its value.
    """
    start_method: Optional[str] = None
    position = 0
    while position < len(args):
        arg = args[position]
        if arg == "--start-method" or arg.startswith("--start-method="):
            if "=" in arg:
                start_method = arg.partition("=")[2]
            elif position + 1 < len(args):
                position += 1
                start_method = args[position]
            else:
                raise UsageError("--start-method needs a value")
        elif arg == "-m":
            if position + 1 >= len(args):
                raise UsageError("-m needs a module name")
            return start_method, None, args[position + 1], args[position + 2 :]
        elif arg.startswith("-m") and len(arg) > 2:  # -mpackage.module, as python accepts
            return start_method, None, arg[2:], args[position + 1 :]
        elif arg == "--":
            position += 1
            break
        elif arg.startswith("-"):
            raise UsageError(f"unknown option {arg!r}")
        else:
            break
        position += 1
    if position >= len(args):
        raise UsageError("no program given")
    return start_method, args[position], None, args[position + 1 :]


def main(args: list[str], prog: str = "python -m poolkit run") -> int:
    """Run the program the command line names; return its exit code.

    The program's own ``SystemExit`` becomes the return value (an int; a message is
    printed to stderr with code 1, as the interpreter does). An exception it does not
    catch goes to ``sys.excepthook`` without the runner's frames, and the code is 1.
    """
    if args and args[0] in ("-h", "--help"):
        print(USAGE.format(prog=prog), end="")
        return 0
    try:
        start_method, script, module, program_args = parse(args)
        if start_method is not None:
            from poolkit._start_methods.registry import start_methods

            if start_method not in start_methods():
                raise UsageError(
                    f"unknown or unavailable start method {start_method!r}; "
                    f"available here: {', '.join(start_methods())}"
                )
        if script is not None and not os.path.exists(script):
            raise UsageError(f"can't open file {script!r}: no such file")
    except UsageError as exc:
        print(f"{prog}: {exc}\n\n{USAGE.format(prog=prog)}", end="", file=sys.stderr)
        return 2
    if start_method is not None:
        os.environ[patch.START_METHOD_ENV] = start_method
    os.environ[patch.TARGET_ENV] = patch.target_for(script, module)
    patch.install()
    # atexit runs after poolkit's own exit hook has finished the pools still open, so
    # tasks the program left running are counted.
    atexit.register(lambda: print(patch.stats.summary(), file=sys.stderr, flush=True))
    try:
        _run(script, module, program_args)
    except SystemExit as exc:
        return _exit_code(exc)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise  # the interpreter reports it and exits as killed by SIGINT
        trimmed = _program_frames(exc.__traceback__)
        sys.excepthook(type(exc), exc.with_traceback(trimmed), trimmed)
        return 1
    return 0


def _run(script: Optional[str], module: Optional[str], program_args: list[str]) -> None:
    # sys.path[0] is the runner's own entry (the current directory for `python -m poolkit`,
    # the console script's directory for `poolkit`): the program's replaces it, unless
    # -P / PYTHONSAFEPATH kept the interpreter from adding one.
    safe_path = getattr(sys.flags, "safe_path", False)
    if module is not None:
        if not safe_path:
            sys.path[0] = os.getcwd()
        sys.argv = ["-m", *program_args]  # runpy sets argv[0] to the module's file
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return
    assert script is not None
    path = os.path.abspath(script)  # __main__.__file__ is absolute, as for `python script`
    if not safe_path:
        sys.path[0] = path if _is_runnable_directory(path) else os.path.dirname(path)
    sys.argv = [script, *program_args]
    runpy.run_path(path, run_name="__main__")


def _is_runnable_directory(path: str) -> bool:
    # A directory or zip file with a __main__.py goes itself on sys.path, as with python.
    return os.path.isdir(path) or (os.path.isfile(path) and _is_zip(path))


def _is_zip(path: str) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message"): printed, exit code 1
    return 1


def _program_frames(tb: Optional[types.TracebackType]) -> Optional[types.TracebackType]:
    """The traceback from the program's first frame on (runner and runpy frames cut)."""
    here = {__file__, runpy.__file__, "<frozen runpy>"}  # frozen since 3.11
    while tb is not None and tb.tb_frame.f_code.co_filename in here:
        tb = tb.tb_next
    return tb


def run_main_in_child() -> dict[str, Any]:
    """Install the patch, then run the program's main module as ``__mp_main__``.

    Called by :mod:`poolkit._run.child` in a spawn or forkserver child; returns the
    program module's namespace.
    """
    patch.install()
    kind, _, target = os.environ.get(patch.TARGET_ENV, "").partition(":")
    if kind == "module":
        return runpy.run_module(target, run_name="__mp_main__", alter_sys=True)
    if kind == "path":
        return runpy.run_path(target, run_name="__mp_main__")
    return _fail_child()


def _fail_child() -> NoReturn:
    raise RuntimeError(
        f"{patch.CHILD_MODULE} was imported outside `python -m poolkit run` "
        f"({patch.TARGET_ENV} is not set)"
    )
