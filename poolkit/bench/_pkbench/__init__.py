"""The measuring side of ``poolkit.bench``: code that runs inside a fresh runner process.

This package is imported by the runner under the top-level name ``_pkbench`` (the parent
appends ``poolkit/bench`` to the runner's ``sys.path``) so that measuring a peer never imports
poolkit, and so that the task functions workers unpickle (``_pkbench.tasks``) import nothing
but the standard library. The parent imports :mod:`.catalog` as plain data.
"""
