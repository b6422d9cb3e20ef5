"""Where the microseconds of one ``submit(fn).result()`` round trip go, stage by stage.

Run from the root of a checkout (``benchmarks`` must be importable, in workers too)::

    python -m benchmarks.roundtrip                       # every start method, a table
    python -m benchmarks.roundtrip --methods fork --rounds 3 --json /tmp/rt.json
    python -m benchmarks.roundtrip --pyspy /path/to/py-spy   # + sampling profiles
    python -m benchmarks.roundtrip --loop burst --method fork --seconds 10  # for a profiler
    python -m benchmarks.roundtrip --summarize out.raw --sidecar out.json

For each start method, on warm ``poolkit.Executor(2, start_method=M)`` pools, in interleaved
rounds (medians over every sample):

- **stages** (:mod:`.stages`): timestamps taken at points that survive a refactor of poolkit
  (:mod:`.patch_points` lists every one, and ``tests/test_roundtrip_smoke.py`` fails when one
  disappears or a stage gets no samples): around ``submit()`` and ``result()``; in the
  standard library's ``Future.set_running_or_notify_cancel`` and ``Future.set_result`` (every
  poolkit future is a plain ``Future``) and ``os.read``/``os.write``/``os.writev`` (the pipes);
  in the worker, through a public ``initializer=`` (:mod:`.stamps`), its reads and
  ``Connection``'s reply write, and the task function itself, which returns the worker's
  timestamps. poolkit's one private name is the direct-send switch, ``Dispatcher._send_direct``:
  timed in the *direct* mode (the caller writes the task to an idle worker), disabled in the
  *queued* one (the dispatcher thread assigns every task, as it does whenever a queue exists).
  Timestamps come from ``perf_counter_ns`` (CLOCK_MONOTONIC: one clock for every process), so
  the gaps between processes are the pipes and wakeups;
- **totals** of the same round trip on a pool without any probe, and of the stdlib
  ``ProcessPoolExecutor`` with the same start method, on a module-level no-op;
- **CPU** per round trip of the parent and of the workers (``getrusage``, ``/proc``): user
  time is mostly Python code, system time is the kernel (system calls, wakeups); plus the
  voluntary context switches (each one a thread that blocked and had to be woken) and the
  time threads waited for a CPU (``schedstat``);
- **floors** (:mod:`.floors`, in a fresh process without threads): a raw ``os.pipe`` round trip
  between two processes (the benchmark runner's own floor) and a thread-to-thread handoff (pipe
  + epoll + ``Future``), each on one CPU, on two CPUs and not pinned; the pipe again while a
  ``nice 19`` busy loop keeps a CPU from going idle; poolkit's own round trip in a process
  pinned, with its workers, to one CPU; and the in-process cost of the standard library's steps
  and of the probes themselves (warm caches).

``--pyspy`` also runs the latency loop and bursts of 20,000 submits under
``py-spy record --nonblocking -r 2000 -f raw -s -t`` and prints each thread's top self-time
lines. py-spy samples threads waiting in ``select``, ``Condition.wait`` or a blocking read
as active: those samples are counted apart and left out of the shares.
"""
