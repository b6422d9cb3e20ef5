"""``python -m poolkit run``: a program run with poolkit in place of ``ProcessPoolExecutor``.

Empty on purpose: importing one module of this package must not import the others
(a worker process imports only what it needs; docs/architecture.md has the module map)."""
