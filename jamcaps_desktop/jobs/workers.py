"""Set-up shared by the worker processes of jobs (the scanner's readers, the writer's preparers), and
results computed in order by a pool of them (the analysis' and the captioner's decoders)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, nullcontext
from multiprocessing import process
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jamcaps_desktop.jobs.base import CancelToken

log = logging.getLogger(__name__)


def _exit_with_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:  # the job's process is gone (killed): do not linger
            os._exit(1)


MAIN_PATH_VARIABLE = "JAMCAPS_FORKSERVER_MAIN"  # the main script, for the fork server (see forkserver_main)
# Imported once by the fork server, so that its forks start with them loaded (the first one loads the
# program's main script: see its docstring).
_TAG_WORKER_MODULES = ["jamcaps_desktop.jobs.forkserver_main", "jamcaps_desktop.scan.reader",
                       "jamcaps_desktop.write.prepare"]


def tag_worker_context() -> multiprocessing.context.BaseContext:
    """How the scanner's and the writer's worker processes start: forked from a fork server where there is one.

    A spawned worker is a fresh interpreter that loads the program again (the command line's or the
    window's modules: a few tenths of a second of CPU per worker and per job, which a batch of a few
    thousand files feels). A fork server does that once per run, and each worker is then a fork of that
    clean, single-threaded server, never of the job's own process with its threads. The analysis keeps
    spawn: its workers must start with the thread settings of the moment (``single_threaded_workers``).
    """
    if getattr(sys, "frozen", False) or "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")  # a frozen build's executable cannot start the server
    from multiprocessing import forkserver  # Unix only

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_TAG_WORKER_MODULES)
    main_path = _main_script()
    if main_path:  # read by the server as it starts (a running server already has it), then removed
        os.environ[MAIN_PATH_VARIABLE] = main_path
    try:
        forkserver.ensure_running()
    except OSError:
        return multiprocessing.get_context("spawn")
    finally:
        os.environ.pop(MAIN_PATH_VARIABLE, None)
    return context


def _main_script() -> str | None:
    """The main script's path as a worker will be told it (None when the program runs as ``-m`` module)."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main.__spec__, "name", None) is not None:
        return None
    path = getattr(main, "__file__", None)
    if path is None:
        return None
    if not os.path.isabs(path) and process.ORIGINAL_DIR is not None:
        path = os.path.join(process.ORIGINAL_DIR, path)
    return os.path.normpath(path)


def init_worker() -> None:
    """Ignore Ctrl-C (the parent decides what it means) and end when the parent process ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watchdog = threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True)
    watchdog.start()


# Thread pools of the numerical libraries a worker may load (OpenBLAS, MKL, OpenMP, BLIS, Accelerate).
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                     "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


@contextmanager
def single_threaded_workers() -> Iterator[None]:
    """While the block runs, worker processes started from this one get one math-library thread each.

    A pool already runs one worker per core; a BLAS that also starts one thread per core in every worker
    puts cores² busy threads on the machine (on 16 cores, the analysis ran several times slower). The
    variables must be in the environment when a worker starts, before it loads numpy; the job's own
    process, which loaded its libraries already, is unaffected. A value the user set is kept.
    """
    # only what is missing is written (and removed again): the environment is not thread-safe, so a block
    # nested in one that already set the variables, in a thread beside others, changes nothing
    added = [name for name in _THREAD_VARIABLES if name not in os.environ]
    for name in added:
        os.environ[name] = "1"
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def in_order(function: Callable[[Any], Any], items: list[Any], workers: int, cancel: CancelToken, *,
             ahead: int, crashed: Callable[[Any], Any], discard: Callable[[Any], None] | None = None,
             sequential_below: int = 2, context: multiprocessing.context.BaseContext | None = None
             ) -> Iterator[Any]:
    """``function(item)`` of each item, in order, computed by ``workers`` processes up to ``ahead`` items
    ahead of the one taken (fewer than ``sequential_below`` items, or one worker: in this process). The
    processes start from ``context``; by default they are spawned, with one math-library thread each
    (``single_threaded_workers``).

    ``function`` must never raise (a worker returns the reason a file failed as a result). A worker that
    dies (a decoder crash) takes every unfinished item of its pool with it: those are computed again one at
    a time, each in a process of its own, so that only the item that crashes gets ``crashed(item)``; a fresh
    pool takes the rest. Results that had finished meanwhile are computed again too, and handed to
    ``discard`` (to free what they hold outside the process). A caller that stops taking results (a cancel,
    or closing the iterator) waits only for the items the workers have started: the rest are never computed,
    and results finished but never taken go to ``discard`` too."""
    if workers <= 1 or len(items) < sequential_below:
        for item in items:
            if cancel.cancelled:
                return
            yield function(item)
        return
    futures: deque[Any] = deque()
    try:
        with _pool(workers, context) as pool:
            futures.extend(pool.submit(function, item) for item in items[:ahead])
            submitted = len(futures)
            while futures:
                if cancel.cancelled:
                    return
                try:
                    result = futures[0].result()
                except BrokenProcessPool:
                    pool.shutdown(wait=False, cancel_futures=True)
                    broken, futures = futures, deque()
                    for future in broken:
                        if _finished(future) and discard is not None:
                            discard(future.result())
                    for item in items[submitted - len(broken):submitted]:
                        if cancel.cancelled:
                            return
                        yield _isolated(function, item, crashed, context)
                    yield from in_order(function, items[submitted:], workers, cancel, ahead=ahead, crashed=crashed,
                                        discard=discard, sequential_below=sequential_below, context=context)
                    return
                futures.popleft()  # the result's memory goes with its future
                if submitted < len(items) and not cancel.cancelled:
                    futures.append(pool.submit(function, items[submitted]))
                    submitted += 1
                yield result
    finally:  # once the pool has stopped: results computed but never taken are handed to ``discard``
        if discard is not None:
            for future in futures:
                if _finished(future):
                    discard(future.result())


def _finished(future: Any) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


@contextmanager
def _pool(workers: int, context: multiprocessing.context.BaseContext | None) -> Iterator[ProcessPoolExecutor]:
    """A pool of ``workers`` processes; when the block ends (its caller done, cancelled or failed), the items no
    worker has started are cancelled, and the pool waits only for those under way."""
    environment = single_threaded_workers() if context is None else nullcontext()
    with environment:
        pool = ProcessPoolExecutor(workers, mp_context=context or multiprocessing.get_context("spawn"),
                                   initializer=init_worker)
        try:
            yield pool
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _isolated(function: Callable[[Any], Any], item: Any, crashed: Callable[[Any], Any],
              context: multiprocessing.context.BaseContext | None) -> Any:
    with _pool(1, context) as pool:
        try:
            return pool.submit(function, item).result()
        except BrokenProcessPool:
            log.warning("a worker crashed on %s", item)
            return crashed(item)
