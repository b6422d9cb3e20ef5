"""The constructor shows its real parameters, to inspect, help() and type checkers."""

from __future__ import annotations

import inspect
import pydoc
import re
import subprocess
import sys
from pathlib import Path

import pytest

import poolkit
from poolkit import Executor

#: Every parameter of the constructor, in order: ProcessPoolExecutor's four positional
#: ones, then poolkit's keyword-only ones.
PARAMETERS = [
    "max_workers",
    "mp_context",
    "initializer",
    "initargs",
    "backend",
    "max_tasks_per_child",
    "start_method",
    "task_timeout",
    "max_memory_per_child",
    "address",
    "client",
]
POSITIONAL = PARAMETERS[:4]


def test_signature_lists_every_parameter() -> None:
    signature = inspect.signature(Executor)
    assert list(signature.parameters) == PARAMETERS
    kinds = {name: p.kind for name, p in signature.parameters.items()}
    assert all(kinds[name] is inspect.Parameter.POSITIONAL_OR_KEYWORD for name in POSITIONAL)
    assert all(
        kinds[name] is inspect.Parameter.KEYWORD_ONLY
        for name in PARAMETERS
        if name not in POSITIONAL
    )
    assert all(p.default is not inspect.Parameter.empty for p in signature.parameters.values())
    assert signature.parameters["initargs"].default == ()


def test_signature_binds_like_the_constructor() -> None:
    signature = inspect.signature(Executor)
    signature.bind(2, None, print, (1,), start_method="spawn", task_timeout=1.0)
    with pytest.raises(TypeError):
        signature.bind(2, None, print, (1,), "spawn")  # start_method is keyword-only


def test_help_shows_the_parameters_and_documents_the_dask_ones() -> None:
    text = pydoc.render_doc(Executor, renderer=pydoc.plaintext)
    first_lines = "\n".join(text.splitlines()[:4])
    for name in PARAMETERS:
        assert f"{name}:" in first_lines or f"{name}=" in first_lines, name
    doc = inspect.getdoc(Executor) or ""
    for name in ("backend", "address", "client"):
        assert re.search(rf"^    {name}: \S", doc, re.MULTILINE), name  # in Args


def test_help_names_the_class_where_it_is_imported_from() -> None:
    text = pydoc.render_doc(Executor, renderer=pydoc.plaintext)
    assert text.splitlines()[0].endswith("class Executor in module poolkit")
    assert repr(Executor) == "<class 'poolkit.Executor'>"


def test_dir_lists_each_public_name_once_and_nothing_imported_for_itself() -> None:
    poolkit.Executor  # noqa: B018  (loaded: now a global of the package too)
    names = dir(poolkit)
    assert len(names) == len(set(names))
    assert set(poolkit.__all__) <= set(names)
    assert not {"Any", "TYPE_CHECKING", "annotations"} & set(names)
    assert [name for name in names if not name.startswith("__")] == sorted(
        name for name in poolkit.__all__ if not name.startswith("__")
    )


def test_a_subclass_shows_its_own_constructor() -> None:
    class Sized(Executor):
        def __init__(self, size: int) -> None:
            super().__init__(size)

    assert list(inspect.signature(Sized).parameters) == ["size"]


def test_an_instance_has_no_constructor_signature() -> None:
    with Executor(1) as ex:
        assert not callable(ex)
        assert not hasattr(ex, "__signature__")


@pytest.mark.parametrize("name", ["address", "client"])
def test_dask_arguments_without_the_dask_backend_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name}= .*needs backend='dask'"):
        Executor(1, **{name: "tcp://127.0.0.1:1"})


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        Executor(1, backend="cluster")  # type: ignore[call-overload]


# ------------------------------------------------------------------ type checkers

SNIPPET = """
from poolkit import Executor

local = Executor(2, start_method="spawn")
reveal_type(local)
reveal_type(Executor())
dask = Executor(backend="dask", address="tcp://127.0.0.1:8786")
Executor(2, max_workers=3)
"""


def _run_mypy(tmp_path: Path) -> list[str]:
    pytest.importorskip("mypy")
    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET)
    root = Path(poolkit.__file__).resolve().parent.parent
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--follow-imports",
            "silent",
            "--config-file",
            "",
            str(snippet),
        ],
        capture_output=True,
        text=True,
        cwd=root,
        env={"MYPYPATH": str(root), "PATH": "", "HOME": str(tmp_path)},
        timeout=240,
    )
    return result.stdout.splitlines()


@pytest.mark.timeout(300)
def test_mypy_types_the_calls(tmp_path: Path) -> None:
    lines = _run_mypy(tmp_path)
    by_line = {int(line.split(":")[1]): line for line in lines if line.startswith(str(tmp_path))}
    assert 'Revealed type is "poolkit._executor.Executor"' in by_line[5], lines
    assert 'Revealed type is "poolkit._executor.Executor"' in by_line[6], lines
    assert 7 not in by_line, lines  # the dask call type-checks
    assert "error:" in by_line[8], lines  # max_workers given twice: the real parameters
    assert len([line for line in lines if ": error:" in line]) == 1, lines


@pytest.mark.skipif(sys.version_info < (3, 11), reason="typing.get_overloads is 3.11+")
def test_the_dask_form_is_declared_to_return_the_dask_executor() -> None:
    # What a checker that follows the typing spec's constructor rules (pyright) uses;
    # mypy types every call as Executor (python/mypy#15182).
    import typing

    overloads = typing.get_overloads(Executor.__new__)
    returns = [inspect.signature(fn).return_annotation for fn in overloads]
    assert returns == ["Executor", "DaskExecutor"]
    dask_form = inspect.signature(overloads[1]).parameters
    assert list(dask_form) == ["cls", "max_workers", "backend", "address", "client"]
