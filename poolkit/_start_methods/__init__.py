"""Start methods: how a worker process is started (fork, spawn, forkserver).

Empty on purpose: importing one module of this package must not import the others
(a worker process imports only what it needs; docs/architecture.md has the module map)."""
