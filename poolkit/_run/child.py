"""The main module of a spawn or forkserver child of a program under ``python -m poolkit run``.

multiprocessing imports this module, as ``__mp_main__``, where it would import the program's
own main module (see :mod:`poolkit._run.patch`). It installs the patch first, then runs the
program's main module and takes its namespace, so the child sees the same ``__mp_main__``
as it would without poolkit, only with ``ProcessPoolExecutor`` replaced.
"""

# One expression, so that no name of this module's own is left in the program's namespace.
globals().update(__import__("poolkit._run.program", fromlist=["_"]).run_main_in_child())
