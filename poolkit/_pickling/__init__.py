"""Serialization: pickling calls and results, function caches, ``__main__`` rebinding.

Empty on purpose: importing one module of this package must not import the others
(a worker process imports only what it needs; docs/architecture.md has the module map)."""
