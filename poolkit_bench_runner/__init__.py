"""The measuring side of ``poolkit.bench``: code that runs inside a fresh runner process.

A top-level package of its own, installed with poolkit (``include = ["poolkit*"]`` in
``pyproject.toml`` matches its name), so that measuring a peer never imports poolkit: nothing
here imports ``poolkit`` except the adapters that measure poolkit itself, and the task
functions workers unpickle (``poolkit_bench_runner.tasks``) import nothing but the standard
library. The parent (``poolkit.bench``) imports :mod:`.catalog` as plain data and
:mod:`.procfs`; :mod:`.main` runs one measurement.
"""
