"""The project's own performance tools: not part of the installed package.

Run from a checkout: ``python benchmarks/run.py`` is a script that puts the checkout's root
first on its path, so these modules import under one name, ``benchmarks.*``, there and in the
tests. Nothing in ``poolkit`` imports this package.
"""
