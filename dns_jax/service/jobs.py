"""Additions to the collection: a job per upload, run one at a time by a background worker thread.

A job is `queued`, `running`, `done` or `failed` (with the reason), with a progress fraction and a
stage message. State changes are saved through the collection (WORK/service/jobs.json, atomic), so a
restarted service still answers for old jobs; jobs that were queued or running when the process
died are settled from what the collection recovered (done if the video reached the index, else
failed: not added).
"""
from __future__ import annotations

import dataclasses
import queue
import threading
import time
import uuid
from typing import Callable, Dict, List, Optional

from dns_jax.service.collection import CollectionError

STATE_FILE = "jobs"
HISTORY = 1000                       # finished jobs kept


@dataclasses.dataclass
class Job:
    id: str
    state: str                       # queued | running | done | failed
    video_id: str
    filename: Optional[str] = None
    progress: float = 0.0
    stage: str = "queued"
    error: Optional[str] = None
    created: float = dataclasses.field(default_factory=time.time)
    started: Optional[float] = None
    finished: Optional[float] = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class Jobs:
    """The job table and its worker. `submit` queues an addition; `stop` lets the running job end
    (up to a timeout) and settles the queued ones as not added."""

    def __init__(self, collection, log: Callable[[str], None] = lambda *_: None):
        self.collection = collection
        self.log = log
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()      # snapshot and write together: no stale overwrite
        self._jobs: Dict[str, Job] = {}
        self._queue: "queue.Queue[Optional[tuple]]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._load()

    # -- persistence --------------------------------------------------------------------------
    def _load(self):
        saved = self.collection.read_json(STATE_FILE) or []
        recovered = self.collection.recovered_jobs()
        for d in saved:
            try:
                job = Job(**d)
            except TypeError:
                continue
            if job.state in ("queued", "running"):
                state, reason = recovered.get(job.id, ("failed", ""))
                job.state, job.finished = state, time.time()
                if state == "done":
                    job.progress, job.stage = 1.0, "done"
                else:
                    job.error = reason or "the server stopped before this addition finished; the video was not added"
                    job.stage = "failed"
            self._jobs[job.id] = job
        self._save()

    def _save(self):
        with self._save_lock:
            with self._lock:
                jobs = sorted(self._jobs.values(), key=lambda j: j.created)
                finished = [j for j in jobs if j.state in ("done", "failed")]
                for j in finished[:max(0, len(finished) - HISTORY)]:
                    del self._jobs[j.id]
                data = [j.as_dict() for j in self._jobs.values()]
            self.collection.write_json(STATE_FILE, data)

    # -- the table ----------------------------------------------------------------------------
    def get(self, job_id: str) -> Optional[Job]:
        with self._lock:
            job = self._jobs.get(job_id)
            return dataclasses.replace(job) if job else None

    def list(self) -> List[Job]:
        with self._lock:
            return [dataclasses.replace(j) for j in self._jobs.values()]

    def pending_ids(self) -> set:
        with self._lock:
            return {j.video_id for j in self._jobs.values() if j.state in ("queued", "running")}

    def submit(self, path: str, video_id: str, filename: Optional[str], extension: str) -> Job:
        """Queue the addition of the file `path` (the job owns it from here)."""
        if self._stopping:
            raise RuntimeError("the service is shutting down")
        job = Job(uuid.uuid4().hex, "queued", video_id, filename)
        with self._lock:
            self._jobs[job.id] = job
        self._save()
        self._queue.put((job.id, path, extension))
        return dataclasses.replace(job)

    def _update(self, job_id: str, save: bool = False, **changes):
        with self._lock:
            job = self._jobs[job_id]
            for k, v in changes.items():
                setattr(job, k, v)
        if save:
            self._save()

    # -- the worker ---------------------------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._run, name="dns-jax-additions", daemon=True)
        self._thread.start()

    def _run(self):
        import os
        while True:
            item = self._queue.get()
            if item is None:
                return
            job_id, path, extension = item
            if self._stopping:
                self._settle_unstarted(job_id, path)
                continue
            self._update(job_id, save=True, state="running", started=time.time(), stage="starting")
            job = self.get(job_id)
            try:
                self.collection.add(path, job.video_id, extension=extension, job=job_id, filename=job.filename,
                                    progress=lambda f, stage: self._update(job_id, progress=f, stage=stage))
            except Exception as e:   # the reason goes to the client; nothing was added
                reason = str(e) if isinstance(e, CollectionError) else f"{type(e).__name__}: {e}"
                self.log(f"job {job_id} ({job.video_id}) failed: {reason}")
                self._update(job_id, save=True, state="failed", error=reason, stage="failed",
                             finished=time.time())
            else:
                self._update(job_id, save=True, state="done", progress=1.0, stage="done", finished=time.time())
            finally:
                if os.path.exists(path):
                    os.remove(path)

    def _settle_unstarted(self, job_id: str, path: str):
        import os
        try:
            os.remove(path)
        except OSError:
            pass
        self._update(job_id, save=True, state="failed", stage="failed", finished=time.time(),
                     error="the service shut down before this addition started; the video was not added")

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop taking jobs; settle the queued ones; wait up to `timeout` s for the running one.
        Returns False if it is still running (the process may exit: start-up recovery settles it)."""
        self._stopping = True
        self._queue.put(None)
        if self._thread is None:
            return True
        self._thread.join(timeout)
        while True:      # anything left behind the sentinel
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._settle_unstarted(item[0], item[1])
        return not self._thread.is_alive()
