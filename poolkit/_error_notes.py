"""How poolkit words values in its error messages, and the notes it adds to exceptions.

Import-light on purpose: a worker process uses these for every failure it reports, and it
does not import :mod:`poolkit._errors` (which loads ``concurrent.futures``) to do so. The
parent uses the same helpers, so a value reads the same in a message from either side.
"""

from __future__ import annotations

from typing import Any

#: How long a value's repr may be in a message; longer ones end in "...".
REPR_LIMIT = 200


def short_repr(value: object, limit: int = REPR_LIMIT) -> str:
    """``repr(value)``, cut to ``limit`` characters; a stand-in if its ``__repr__`` fails."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__qualname__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def arguments_repr(args: Any) -> str:
    """``1, 'a'`` for the argument tuple ``(1, 'a')``: how an item reads in an error note."""
    if not isinstance(args, tuple):
        return short_repr(args)
    text = ", ".join(short_repr(arg, 80) for arg in args)
    return text if len(text) <= REPR_LIMIT else text[: REPR_LIMIT - 3] + "..."


def add_note(exc: BaseException, note: str) -> None:
    """Add ``note`` to ``exc`` once (``BaseException.add_note``, Python 3.11+; before 3.11,
    nothing: the caller says it elsewhere, in the traceback text for instance).

    Never raises: it runs while an error is being reported, and an exception whose
    ``__notes__`` is not a list (user code may set it) keeps its notes as they are.
    """
    try:
        add = getattr(exc, "add_note", None)
        if add is not None and note not in getattr(exc, "__notes__", ()):
            add(note)
    except Exception:
        pass
