"""One model, many sessions: the worker thread that owns the model and the scheduler in front of it.

Specification.

* Every model call (ingest of a chunk, a question, a watch change) is a *job* run on one worker thread, so
  the model and every session's memory are touched by one thread only.
* Order: questions first (oldest first), so time to first token holds while other sessions ingest; then
  ingest jobs round-robin over sessions (one job of each session in turn), so a session pushing many
  frames cannot starve the others.
* Bounds: each session's ingest queue holds at most ``max_queued`` jobs. When a job arrives at a full
  queue the *oldest* queued job of that session is dropped (a live stream's newest frames matter most),
  its frames are counted in ``dropped_frames`` of that session, and the drop is never silent
  (:attr:`Scheduler.dropped`, the session's info, ``/metrics``). Questions are never dropped.
* ``submit`` returns a :class:`concurrent.futures.Future`; a job's exception is its future's, the worker
  goes on. ``close()`` stops the thread after the job in progress; queued jobs fail with
  :class:`SchedulerClosed`.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

__all__ = ["Scheduler", "SchedulerClosed"]


class SchedulerClosed(RuntimeError):
    """The server is shutting down: the job was not run."""


@dataclass
class _Job:
    fn: Callable[[], Any]
    future: Future
    frames: int = 0  # frames an ingest job carries (counted if it is dropped)


class Scheduler:
    """Questions first, ingest round-robin by session, bounded per session (see the module docstring)."""

    def __init__(self, max_queued: int = 32) -> None:
        if max_queued < 1:
            raise ValueError(f"max_queued must be >= 1, got {max_queued}")
        self.max_queued = max_queued
        self._cond = threading.Condition()
        self._questions: deque[_Job] = deque()
        self._ingest: dict[str, deque[_Job]] = defaultdict(deque)
        self._turns: deque[str] = deque()  # sessions with queued ingest, in round-robin order
        self.dropped: dict[str, int] = defaultdict(int)
        self.jobs_done = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ppllava-hermes-worker", daemon=True)
        self._thread.start()

    # ---- submitting -----------------------------------------------------------------------------
    def question(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` before any queued ingest."""
        return self._put(_Job(fn, Future()), None)

    def ingest(self, session_id: str, fn: Callable[[], Any], frames: int = 0) -> Future:
        """Queue ``fn`` (carrying ``frames`` frames) behind ``session_id``'s earlier ingest jobs."""
        return self._put(_Job(fn, Future(), frames), session_id)

    def _put(self, job: _Job, session_id: str | None) -> Future:
        with self._cond:
            if self._closed:
                job.future.set_exception(SchedulerClosed("the server is shutting down"))
                return job.future
            if session_id is None:
                self._questions.append(job)
            else:
                q = self._ingest[session_id]
                if len(q) >= self.max_queued:  # drop the oldest: a live stream's newest frames matter most
                    old = q.popleft()
                    self.dropped[session_id] += old.frames
                    old.future.set_exception(DroppedJob(f"dropped: session {session_id!r} fell behind "
                                                        f"({self.max_queued} chunks queued)"))
                q.append(job)
                if session_id not in self._turns:
                    self._turns.append(session_id)
            self._cond.notify()
        return job.future

    def forget(self, session_id: str) -> None:
        """Drop a deleted session's queued ingest (its futures fail with :class:`SchedulerClosed`)."""
        with self._cond:
            for job in self._ingest.pop(session_id, deque()):
                job.future.set_exception(SchedulerClosed(f"session {session_id!r} was deleted"))
            if session_id in self._turns:
                self._turns.remove(session_id)
            self.dropped.pop(session_id, None)

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs (False after ``close()`` or if it died)."""
        return self._thread.is_alive()

    def depth(self, session_id: str | None = None) -> int:
        """Queued jobs: of one session's ingest, or questions + all ingest."""
        with self._cond:
            if session_id is not None:
                return len(self._ingest.get(session_id, ()))
            return len(self._questions) + sum(len(q) for q in self._ingest.values())

    # ---- the worker -----------------------------------------------------------------------------
    def _next(self) -> _Job | None:
        with self._cond:
            while not self._closed and not self._questions and not self._turns:
                self._cond.wait()
            if self._closed:
                return None
            if self._questions:
                return self._questions.popleft()
            sid = self._turns.popleft()
            q = self._ingest[sid]
            job = q.popleft()
            if q:
                self._turns.append(sid)
            else:
                del self._ingest[sid]
            return job

    def _run(self) -> None:
        while (job := self._next()) is not None:
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                job.future.set_result(job.fn())
            except BaseException as err:  # noqa: BLE001 - the job's failure is its caller's; the worker goes on
                job.future.set_exception(err)
            self.jobs_done += 1

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            pending = list(self._questions) + [j for q in self._ingest.values() for j in q]
            self._questions.clear()
            self._ingest.clear()
            self._turns.clear()
            self._cond.notify_all()
        for job in pending:
            job.future.set_exception(SchedulerClosed("the server is shutting down"))
        self._thread.join(timeout)


class DroppedJob(RuntimeError):
    """An ingest job dropped because its session's queue was full (counted in ``Scheduler.dropped``)."""
