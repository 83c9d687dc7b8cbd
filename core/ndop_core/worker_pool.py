"""A pool of worker processes that works wherever Python runs: a plain script without an
`if __name__ == "__main__":` guard, a notebook, a Spark executor.

multiprocessing's spawn and forkserver start methods import the caller's main module again in
every worker, so a script without the guard starts its own work once more in each and breaks
the pool; fork is unsafe once gRPC has started threads. These workers are instead fresh Python
interpreters (`python -c ...`) that import only ndop and the functions they are given, and talk
to the pool over their standard input and output, one pickled task or answer at a time.

A worker lives exactly as long as the process that started it: a thread in the worker reads its
standard input, whose only writer is that process, and ends the worker the moment the pipe
closes, which the kernel does whenever the parent exits, SIGKILL included.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from typing import IO, Any, Final, TypeVar

from ndop_core.errors import NdopError
from ndop_core.process_environment import ONE_BLAS_THREAD

T = TypeVar("T")

_BOOT: Final = (
    "import importlib, pickle, sys\n"
    "sys.path[:], preload = pickle.load(sys.stdin.buffer)\n"
    "for module in preload:\n"
    "    importlib.import_module(module)\n"
    "from ndop_core.worker_pool import serve\n"
    "serve()\n"
)
_PROTOCOL: Final = pickle.HIGHEST_PROTOCOL


class WorkerFailed(NdopError):
    """A worker process died or could not start; the work it held is lost."""


class _Task:
    __slots__ = ("args", "function", "future")

    def __init__(self, future: Future[Any], function: Callable[..., Any], args: tuple[Any, ...]):
        self.future = future
        self.function = function
        self.args = args


class WorkerPool(Executor):
    """`workers` processes, started on the first task; an Executor like ProcessPoolExecutor
    for module-level functions whose arguments and results pickle."""

    def __init__(self, workers: int) -> None:
        self._workers = max(1, workers)
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._processes: list[subprocess.Popen[bytes]] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False
        self._broken: str | None = None

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes]

    def start(self, preload: Sequence[str] = ()) -> None:
        """Start the workers now rather than at the first task, each importing the modules
        `preload` names, so that they are ready by the time the caller has work for them."""
        with self._lock:
            if not (self._processes or self._closed or self._broken):
                self._start(tuple(preload))

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        if kwargs:
            raise TypeError("WorkerPool passes positional arguments only")
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit to a pool that was shut down")
            if self._broken is not None:
                future.set_exception(WorkerFailed(self._broken))
                return future
            if not self._processes:
                self._start()
            self._tasks.put(_Task(future, fn, args))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if cancel_futures:
            self._cancel_queued()
            for process in self._processes:
                process.kill()
        for _ in self._threads:
            self._tasks.put(None)
        if wait:
            for thread in self._threads:
                thread.join()
            for process in self._processes:
                process.wait()

    def _start(self, preload: tuple[str, ...] = ()) -> None:
        if not sys.executable:
            raise WorkerFailed("cannot start worker processes: Python's executable is unknown")
        for _ in range(self._workers):
            try:
                process = subprocess.Popen(
                    [sys.executable, "-c", _BOOT],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    close_fds=True,
                    env=ONE_BLAS_THREAD | os.environ,
                )
            except OSError as exc:
                raise WorkerFailed(f"cannot start a worker process: {exc.strerror}") from None
            assert process.stdin is not None
            pickle.dump((list(sys.path), preload), process.stdin, protocol=_PROTOCOL)
            process.stdin.flush()
            self._processes.append(process)
            thread = threading.Thread(
                target=self._dispatch, args=(process,), name="ndop-worker", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _dispatch(self, process: subprocess.Popen[bytes]) -> None:
        stdin, stdout = process.stdin, process.stdout
        assert stdin is not None and stdout is not None
        try:
            while (task := self._tasks.get()) is not None:
                if task.future.set_running_or_notify_cancel() and not self._run(
                    task, stdin, stdout, process
                ):
                    return
        finally:
            _close(stdin)

    def _run(
        self, task: _Task, stdin: IO[bytes], stdout: IO[bytes], process: subprocess.Popen[bytes]
    ) -> bool:
        """Run one task on `process`; False when the worker is gone."""
        try:
            request = pickle.dumps((task.function, task.args), protocol=_PROTOCOL)
        except Exception as exc:
            task.future.set_exception(exc)
            return True
        try:
            stdin.write(request)
            stdin.flush()
            succeeded, value = pickle.load(stdout)
        except (OSError, EOFError, pickle.UnpicklingError):
            reason = _exit_reason(process)
            with self._lock:
                self._broken = self._broken or f"a worker process {reason}"
            task.future.set_exception(WorkerFailed(f"a worker process {reason}"))
            self._cancel_queued()
            return False
        if succeeded:
            task.future.set_result(value)
        else:
            task.future.set_exception(value)
        return True

    def _cancel_queued(self) -> None:
        """Fail every task not yet taken, leaving the shutdown sentinels in place."""
        sentinels = 0
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                break
            if task is None:
                sentinels += 1
            elif task.future.set_running_or_notify_cancel():
                task.future.set_exception(WorkerFailed(self._broken or "the pool was shut down"))
        for _ in range(sentinels):
            self._tasks.put(None)


def _exit_reason(process: subprocess.Popen[bytes]) -> str:
    try:
        code = process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        return "stopped answering"
    if code < 0:
        return f"was killed by signal {-code}"
    return f"exited unexpectedly with code {code}"


def _close(stream: IO[bytes]) -> None:
    with contextlib.suppress(OSError):
        stream.close()


def serve() -> None:
    """A worker's life: answer tasks from standard input until it closes, then exit at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the answers
    tasks: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.SimpleQueue()

    def read() -> None:
        while True:
            try:
                tasks.put(pickle.load(requests))
            except BaseException:
                os._exit(0)

    threading.Thread(target=read, name="lifeline", daemon=True).start()
    while True:
        function, args = tasks.get()
        try:
            answer = pickle.dumps((True, function(*args)), protocol=_PROTOCOL)
        except BaseException as exc:
            answer = pickle.dumps((False, _portable(exc)), protocol=_PROTOCOL)
        answers.write(answer)
        answers.flush()


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it survives pickling; otherwise a plain stand-in."""
    try:
        pickle.loads(pickle.dumps(exc, protocol=_PROTOCOL))
    except Exception:
        return RuntimeError(f"{type(exc).__name__} in a worker process")
    return exc
