"""``Executor.map`` and ``starmap``, in the caller's thread (the executor resolves results).

Empty on purpose: importing one module of this package must not import the others
(a worker process imports only what it needs; docs/architecture.md has the module map)."""
