"""What crosses between the parent and a worker: imported by both sides, so kept light.

Empty on purpose: importing one module of this package must not import the others
(a worker process imports only what it needs; docs/architecture.md has the module map)."""
