"""The project's own performance tools: not part of the installed package.

Run from a checkout's root, where these modules import under one name, ``benchmarks.*``, in
the tests and in the profile's worker processes alike: ``python -m benchmarks.roundtrip``, or
``python benchmarks/run.py`` (a script that puts the checkout's root first on its path).
Nothing in ``poolkit`` imports this package.
"""
