"""Serving: bounded-memory streaming sessions over HTTP (``ppllava-hermes serve``, extra ``[serve]``).

``worker`` holds the scheduler (one thread owns the model; questions first, ingest round-robin, bounded);
``app`` the FastAPI application and its endpoints; ``page.html`` the web page served at ``/``.
"""

from .worker import Scheduler, SchedulerClosed

__all__ = ["Scheduler", "SchedulerClosed"]
