"""The parent's side of a local pool: the dispatcher thread and everything it decides.

Empty on purpose: importing one module of this package must not import the others
(a worker process imports only what it needs; docs/architecture.md has the module map)."""
