"""The dask backend: ``Executor(backend="dask")``, its cluster's security, what a dask
worker runs.

Empty on purpose: importing one module of this package must not import the others
(a worker process imports only what it needs; docs/architecture.md has the module map)."""
