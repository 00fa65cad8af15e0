"""The Jenkins executor: one parameterised job, one agent per real SPDK host.

A request becomes ``buildWithParameters`` with ``SPDK_COMMIT``,
``FLAKEBOT_TESTS``, ``FLAKEBOT_ITERATIONS``, ``FLAKEBOT_RUN_ID`` (unique per
request, so Jenkins never merges two of our requests into one queue item) and
``LABEL``. The executor then follows the queue item (``why``, ``cancelled``,
``executable``) and the build (``result``, ``building``, ``builtOn``,
``duration``), and streams the console with ``logText/progressiveText?start=N``
chunk by chunk, so a 200 MB log never sits in memory.

Handles are self-describing strings, canonical JSON::

    {"build":42,"job":"flakebot-vfio-user","queue":17,"run_id":"c3-0007"}

``submit`` returns one with the queue id; ``poll`` returns the same handle with
the build number in ``BuildStatus.external_id`` as soon as the queue item has
an executable (queue items expire minutes after they leave the queue, so the
campaign must store it and use it as the handle from then on). The short forms
``queue:17`` and ``build:42`` are accepted too. After a restart the campaign
hands stored handles back; a request whose handle was never stored is found
again with :meth:`JenkinsExecutor.find_by_run_id`, which scans the queue and
recent builds for the ``FLAKEBOT_RUN_ID`` parameter.

Every HTTP call has a timeout; connection errors, timeouts and 5xx answers are
retried with exponential backoff; 4xx are not. 401/403 become a one-line
:class:`ExecutorError` naming the URL and user, never the token. CSRF crumbs are
fetched by python-jenkins and sent with every request, ours included; a stale
crumb (403 "No valid crumb") is refetched once.
"""
from __future__ import annotations

import codecs
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import jenkins
import requests

from flakebot.executors.base import ExecutorError
from flakebot.model import BuildState, BuildStatus, RunRequest

log = logging.getLogger(__name__)

T = TypeVar("T")

PARAM_COMMIT = "SPDK_COMMIT"
PARAM_TESTS = "FLAKEBOT_TESTS"
PARAM_ITERATIONS = "FLAKEBOT_ITERATIONS"
PARAM_RUN_ID = "FLAKEBOT_RUN_ID"
PARAM_LABEL = "LABEL"

ENV_URL = "FLAKEBOT_JENKINS_URL"
ENV_USER = "FLAKEBOT_JENKINS_USER"
ENV_TOKEN = "FLAKEBOT_JENKINS_TOKEN"
ENV_JOB = "FLAKEBOT_JENKINS_JOB"
ENV_LABEL = "FLAKEBOT_JENKINS_LABEL"

DEFAULT_JOB = "flakebot-vfio-user-restart"
DEFAULT_LABEL = "vfio-user"

# Jenkins result -> host script exit status as far as it is known. The job
# (jobs/) marks exit 1 (a test failed) UNSTABLE; FAILURE is exit 3 (infra) or
# anything else that broke the build, so its status is not known.
_RC = {"SUCCESS": 0, "UNSTABLE": 1}

# A queue item's `why` when no online agent can ever take it (Jenkins core's
# Queue.LabelHasNoNodes, CauseOfBlockage BecauseLabelIsOffline / BecauseNodeIsOffline).
_NO_NODE_WHY_RE = re.compile(r"There are no nodes with the label|are offline|is offline")


# ---------------------------------------------------------------------------
# Handles
# ---------------------------------------------------------------------------


@dataclass
class Handle:
    job: str
    run_id: str = ""
    queue: Optional[int] = None
    build: Optional[int] = None

    def encode(self) -> str:
        d: dict[str, Any] = {"job": self.job}
        if self.queue is not None:
            d["queue"] = self.queue
        if self.build is not None:
            d["build"] = self.build
        if self.run_id:
            d["run_id"] = self.run_id
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str, default_job: str) -> "Handle":
        text = (text or "").strip()
        if text.startswith("{"):
            try:
                d = json.loads(text)
                return cls(
                    job=str(d.get("job") or default_job),
                    run_id=str(d.get("run_id") or ""),
                    queue=None if d.get("queue") is None else int(d["queue"]),
                    build=None if d.get("build") is None else int(d["build"]),
                )
            except (ValueError, TypeError) as e:
                raise ExecutorError(f"not a Jenkins handle: {text[:80]!r}") from e
        kind, _, num = text.partition(":")
        if kind in ("queue", "build") and num.isdigit():
            return cls(job=default_job, **{kind: int(num)})
        raise ExecutorError(f"not a Jenkins handle: {text[:80]!r}")


@dataclass
class JenkinsBuildStatus(BuildStatus):
    """BuildStatus plus what Jenkins said: ``result`` (SUCCESS, UNSTABLE,
    FAILURE, ABORTED, NOT_BUILT or None while running/queued) and a short
    ``reason`` (queue ``why``, why it is LOST, ...)."""

    result: Optional[str] = None
    reason: str = ""
    queue_id: Optional[int] = None
    build_number: Optional[int] = None


# ---------------------------------------------------------------------------
# python-jenkins with errors we can classify
# ---------------------------------------------------------------------------


class JenkinsUnavailable(ExecutorError):
    """Jenkins did not answer usefully after all retries (connection errors,
    timeouts, 5xx): a transient condition, unlike a refused token."""


class _HTTPStatusError(Exception):
    def __init__(self, status: int, url: str, body: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status, self.url, self.body = status, url, body


class _Jenkins(jenkins.Jenkins):
    """python-jenkins whose responses raise :class:`_HTTPStatusError` (a
    status we can retry on or not) instead of its catch-all exceptions; 404
    stays ``NotFoundException`` (its crumb logic relies on it)."""

    def _response_handler(self, response: requests.Response) -> requests.Response:
        if response.status_code == 404:
            response.close()
            raise jenkins.NotFoundException("Requested item could not be found")
        if response.status_code >= 400:
            try:
                if getattr(response, "_content_consumed", False):
                    body = response.text[:2048]
                else:  # a streamed answer: read only its start
                    body = response.raw.read(2048, decode_content=True).decode("utf-8", "replace")
            except Exception:
                body = ""
            response.close()
            raise _HTTPStatusError(response.status_code, _safe_url(response.url or ""), body)
        return response


def _safe_url(url: str) -> str:
    """The URL without user:password@ and without the query."""
    try:
        p = urlsplit(url)
    except ValueError:
        return "<bad url>"
    netloc = p.hostname or ""
    if p.port:
        netloc += f":{p.port}"
    return urlunsplit((p.scheme, netloc, p.path, "", ""))


def _label_matches(expr: str, labels: set[str]) -> bool:
    """Jenkins label expression, the usual subset: atoms, ``&&``, ``||``, ``!``."""
    expr = (expr or "").strip()
    if not expr:
        return True
    for alt in expr.split("||"):
        ok = True
        for atom in alt.split("&&"):
            atom = atom.strip().strip("()").strip()
            neg = atom.startswith("!")
            atom = atom.lstrip("!").strip().strip('"')
            if (atom in labels) == neg:
                ok = False
                break
        if ok:
            return True
    return False


_NODE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def pin_label(label: str, node: str) -> str:
    """The label expression that runs a build on `node` only (a Jenkins label
    expression is tested against each agent's labels and its name).

    >>> pin_label("vfio-user", "host-3"), pin_label("a || b", "h1"), pin_label("", "h1")
    ('vfio-user && host-3', '(a || b) && h1', 'h1')
    """
    if not _NODE_NAME_RE.fullmatch(node or ""):
        raise ExecutorError(f"Jenkins: cannot pin a build to node {node!r}: not a plain node name")
    label = (label or "").strip()
    if not label:
        return node
    return f"({label}) && {node}" if "||" in label else f"{label} && {node}"


def _params_of(obj: dict) -> dict[str, str]:
    """Build parameters from a build's or queue item's ``actions``."""
    out: dict[str, str] = {}
    for action in obj.get("actions") or []:
        for p in (action or {}).get("parameters") or []:
            if isinstance(p, dict) and "name" in p:
                out[p["name"]] = "" if p.get("value") is None else str(p.get("value"))
    if not out and isinstance(obj.get("params"), str):  # queue items: "\nK=V\nK2=V2"
        for line in obj["params"].splitlines():
            k, sep, v = line.partition("=")
            if sep:
                out[k.strip()] = v
    return out


# ---------------------------------------------------------------------------
# The executor
# ---------------------------------------------------------------------------


class JenkinsExecutor:
    """Runs requests as builds of one parameterised Jenkins job (see module doc)."""

    name = "jenkins"

    def __init__(
        self,
        url: str,
        user: str,
        token: str,
        job: str = DEFAULT_JOB,
        label: str = DEFAULT_LABEL,
        max_parallel: int = 8,
        timeout: float = 30.0,
        retries: int = 5,
        poll_seconds: float = 5.0,
        *,
        backoff_seconds: float = 1.0,
        backoff_max: float = 60.0,
        scan_builds: int = 100,
        chunk_size: int = 64 * 1024,
        tests_separator: str = " ",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not url:
            raise ExecutorError(f"no Jenkins URL (set {ENV_URL})")
        if not user or not token:
            raise ExecutorError(f"Jenkins user and API token are required (set {ENV_USER} and {ENV_TOKEN})")
        self.url = url if url.endswith("/") else url + "/"
        self.safe_url = _safe_url(self.url)
        self.user = user
        self.job = job
        self.label = label
        self.max_parallel = max(1, int(max_parallel))
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.poll_seconds = float(poll_seconds)
        self.backoff_seconds = float(backoff_seconds)
        self.backoff_max = float(backoff_max)
        self.scan_builds = int(scan_builds)
        self.chunk_size = int(chunk_size)
        self.tests_separator = tests_separator
        self._sleep = sleep
        self._server = _Jenkins(self.url, user, token, timeout=self.timeout, retries=0)
        self._finished: dict[tuple[str, int], JenkinsBuildStatus] = {}
        self._last: dict[str, JenkinsBuildStatus] = {}
        self._slots: Optional[int] = None
        # run id -> the request it names: a queue item or build found by run id
        # is adopted only if its parameters are this request's (request_mismatch).
        self._requests: dict[str, RunRequest] = {}

    @classmethod
    def from_env(cls, **options: Any) -> "JenkinsExecutor":
        """Read URL, user, token (and job, label if set) from ``FLAKEBOT_JENKINS_*``."""
        env = os.environ
        kw: dict[str, Any] = {
            "url": env.get(ENV_URL, ""),
            "user": env.get(ENV_USER, ""),
            "token": env.get(ENV_TOKEN, ""),
        }
        if env.get(ENV_JOB):
            kw["job"] = env[ENV_JOB]
        if env.get(ENV_LABEL):
            kw["label"] = env[ENV_LABEL]
        kw.update(options)
        return cls(**kw)

    def __repr__(self) -> str:  # never the token
        return f"JenkinsExecutor({self.safe_url!r}, user={self.user!r}, job={self.job!r}, label={self.label!r})"

    # -- HTTP plumbing -----------------------------------------------------

    def _job_path(self, job: str) -> str:
        return "".join(f"job/{quote(part, safe='')}/" for part in job.strip("/").split("/"))

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one HTTP exchange with retries on connection errors, timeouts
        and 5xx (exponential backoff); 401/403 and other 4xx fail at once.
        ``jenkins.NotFoundException`` (404) is passed through to the caller."""
        crumb_refreshed = False
        attempt = 0
        while True:
            try:
                return fn()
            except jenkins.NotFoundException:
                raise
            except _HTTPStatusError as e:
                if e.status == 403 and "crumb" in e.body.lower() and not crumb_refreshed:
                    crumb_refreshed = True
                    self._server.crumb = None  # stale crumb: fetch a new one, once
                    continue
                if e.status < 500:
                    raise self._refused(what, e) from None
                err: Exception = e
            except (requests.ConnectionError, requests.Timeout, jenkins.TimeoutException) as e:
                err = e
            except jenkins.JenkinsException as e:
                raise ExecutorError(f"Jenkins {self.safe_url}: {what}: {str(e).splitlines()[0][:200]}") from None
            if attempt >= self.retries:
                raise JenkinsUnavailable(
                    f"Jenkins {self.safe_url}: {what} failed after {attempt + 1} attempts: "
                    f"{_short(err)}") from None
            delay = min(self.backoff_max, self.backoff_seconds * (2 ** attempt))
            log.warning("jenkins: %s: %s; retry %d/%d in %.1fs", what, _short(err), attempt + 1,
                        self.retries, delay)
            attempt += 1
            self._sleep(delay)

    def _refused(self, what: str, e: _HTTPStatusError) -> ExecutorError:
        """A 4xx as a one-line error: URL and user, never the token."""
        if e.status in (401, 403):
            return ExecutorError(
                f"Jenkins {self.safe_url} refused {what} for user {self.user!r}: HTTP {e.status} "
                f"(check the API token and the user's permissions)")
        return ExecutorError(f"Jenkins {self.safe_url}: {what}: HTTP {e.status} at {e.url}")

    def _get_json(self, path: str) -> Any:
        req = requests.Request("GET", self.url + path)
        text = self._server.jenkins_open(req)
        try:
            return json.loads(text)
        except ValueError as e:
            raise ExecutorError(f"Jenkins {self.safe_url}: {path.split('?')[0]}: not JSON") from e

    def _json(self, what: str, path: str) -> Any:
        return self._call(what, lambda: self._get_json(path))

    # -- the interface -----------------------------------------------------

    def slots(self) -> int:
        """Online agents carrying the label, capped by ``max_parallel``. While
        Jenkins does not answer, the last known figure (if there is one)."""
        try:
            self._slots = min(self.max_parallel, len(self.agents()))
        except JenkinsUnavailable as e:
            if self._slots is None:
                raise
            log.warning("jenkins: %s; assuming %d slots", e, self._slots)
        return self._slots

    def agents(self) -> list[str]:
        """Names of the online agents whose labels match ``label``."""
        data = self._json("list agents",
                          "computer/api/json?tree=computer[displayName,offline,numExecutors,"
                          "assignedLabels[name]]")
        names = []
        for c in data.get("computer") or []:
            labels = {lab.get("name", "") for lab in c.get("assignedLabels") or []}
            labels.add(c.get("displayName", ""))
            if c.get("offline") or not c.get("numExecutors", 1):
                continue
            if _label_matches(self.label, labels):
                names.append(c.get("displayName", ""))
        return names

    def parameters(self, request: RunRequest) -> dict[str, str]:
        params = {
            PARAM_COMMIT: request.commit,
            PARAM_TESTS: self.tests_separator.join(request.tests),
            PARAM_ITERATIONS: str(int(request.iterations)),
            PARAM_RUN_ID: request.run_id,
        }
        if self.label:  # empty: the job's own label applies
            params[PARAM_LABEL] = self.label
        if request.host is not None:
            params[PARAM_LABEL] = pin_label(self.label, request.host)
        return params

    def submit(self, request: RunRequest) -> str:
        """Queue one build; returns the handle (queue id and run id).

        A retried trigger first looks for the run id, so a POST that reached
        Jenkins before the connection broke never starts a second build."""
        if not request.run_id:
            raise ExecutorError("RunRequest.run_id must be set (Jenkins merges identical requests)")
        self._requests[request.run_id] = request
        params = self.parameters(request)
        attempt = 0
        while True:
            try:
                if attempt:
                    found = self.find_by_run_id(request.run_id)
                    if found is not None:
                        return found
                qid = self._server.build_job(self.job, params)
                return Handle(self.job, request.run_id, queue=int(qid)).encode()
            except jenkins.NotFoundException:
                raise ExecutorError(f"Jenkins {self.safe_url}: no job {self.job!r}") from None
            except _HTTPStatusError as e:
                if e.status == 403 and "crumb" in e.body.lower() and attempt == 0:
                    self._server.crumb = None
                elif e.status < 500:
                    raise self._refused(f"trigger {self.job}", e) from None
                err: Exception = e
            except (requests.ConnectionError, requests.Timeout, jenkins.TimeoutException,
                    JenkinsUnavailable) as e:
                err = e  # JenkinsUnavailable: the run-id lookup failed; do not trigger blind
            except jenkins.JenkinsException as e:
                raise ExecutorError(f"Jenkins {self.safe_url}: trigger {self.job}: "
                                    f"{str(e).splitlines()[0][:200]}") from None
            if attempt >= self.retries:
                raise JenkinsUnavailable(f"Jenkins {self.safe_url}: trigger {self.job} failed after "
                                         f"{attempt + 1} attempts: {_short(err)}")
            delay = min(self.backoff_max, self.backoff_seconds * (2 ** attempt))
            log.warning("jenkins: trigger %s: %s; retry in %.1fs", self.job, _short(err), delay)
            attempt += 1
            self._sleep(delay)

    def poll(self, handle: str) -> JenkinsBuildStatus:
        """The request's state. ``external_id`` is the handle, updated with the
        build number as soon as Jenkins has one: store it, use it from then on."""
        h = Handle.decode(handle, self.job)
        if h.build is not None and (h.job, h.build) in self._finished:
            return self._remember(handle, self._finished[(h.job, h.build)])
        try:
            if h.build is None:
                status = self._follow_queue(h)
                if status is not None:
                    return self._remember(handle, status)
            return self._remember(handle, self._build_status(h))
        except JenkinsUnavailable as e:
            # Jenkins restarting or a network blip: a request we last saw queued
            # or running still is, as far as we know; the next poll asks again.
            last = self._last.get(self._key(handle))
            if last is None or last.state not in (BuildState.QUEUED, BuildState.RUNNING):
                raise
            log.warning("jenkins: %s; keeping the last known state (%s)", e, last.state.value)
            return last

    def _key(self, handle: str) -> str:
        try:
            h = Handle.decode(handle, self.job)
        except ExecutorError:
            return handle
        return f"run:{h.run_id}" if h.run_id else f"{h.job}:q{h.queue}:b{h.build}"

    def _remember(self, handle: str, status: JenkinsBuildStatus) -> JenkinsBuildStatus:
        self._last[self._key(handle)] = status
        if status.external_id:
            self._last[self._key(status.external_id)] = status
        return status

    def _follow_queue(self, h: Handle) -> Optional[JenkinsBuildStatus]:
        """Resolve h.build from the queue item; a status if it is not a build yet."""
        if h.queue is None:
            found = self.find_by_run_id(h.run_id) if h.run_id else None
            if found is None:
                return JenkinsBuildStatus(BuildState.LOST, external_id=h.encode(),
                                          reason="no queue item or build for this request")
            f = Handle.decode(found, self.job)
            h.queue, h.build = f.queue, f.build
            if h.build is not None:
                return None
        try:
            item = self._json(f"read queue item {h.queue}", f"queue/item/{h.queue}/api/json")
        except jenkins.NotFoundException:
            # Left items expire a few minutes after leaving the queue.
            found = self._find_build(h.job, h.run_id) if h.run_id else None
            if found is None:
                return JenkinsBuildStatus(
                    BuildState.LOST, external_id=h.encode(), queue_id=h.queue,
                    reason=f"queue item {h.queue} expired and no build carries run id {h.run_id!r}")
            h.build = found
            return None
        if item.get("cancelled"):
            return JenkinsBuildStatus(BuildState.LOST, external_id=h.encode(), queue_id=h.queue,
                                      reason=f"queue item {h.queue} was cancelled")
        stranger = self._stranger(_params_of(item), h.run_id)
        if stranger:  # never followed into a build: lost before it started, so asked again
            return JenkinsBuildStatus(BuildState.LOST, external_id=Handle(h.job, h.run_id).encode(),
                                      queue_id=h.queue, reason=f"queue item {h.queue} {stranger}")
        exe = item.get("executable")
        if not exe or exe.get("number") is None:
            why = item.get("why") or ""
            gone = self._pin_gone(h, why)
            if gone:  # it would wait forever: withdrawn, lost before it started, so asked again
                return JenkinsBuildStatus(BuildState.LOST, external_id=Handle(h.job, h.run_id).encode(),
                                          queue_id=h.queue, reason=gone)
            return JenkinsBuildStatus(BuildState.QUEUED, external_id=h.encode(), queue_id=h.queue, reason=why)
        h.build = int(exe["number"])
        return None

    def _pin_gone(self, h: Handle, why: str) -> Optional[str]:
        """Why the queued request pinned to a node can never start there (the
        node went offline or left Jenkins, which the queue item's ``why`` says
        and the agent list confirms), after cancelling its queue item; None
        while it can still start."""
        request = self._requests.get(h.run_id or "")
        if request is None or request.host is None or not _NO_NODE_WHY_RE.search(why):
            return None
        try:
            if request.host in self.agents():
                return None
            self._call(f"cancel queue item {h.queue}", lambda: self._server.cancel_queue(h.queue))
        except JenkinsUnavailable:
            return None  # ask again at the next poll
        return f"pinned host {request.host} is offline or gone (Jenkins: {why[:200]})"

    def _build_status(self, h: Handle) -> JenkinsBuildStatus:
        assert h.build is not None
        path = f"{self._job_path(h.job)}{h.build}/api/json"
        try:
            info = self._json(f"read build {h.job} #{h.build}", path)
        except jenkins.NotFoundException:
            return JenkinsBuildStatus(BuildState.LOST, external_id=h.encode(), queue_id=h.queue,
                                      build_number=h.build, reason=f"build #{h.build} not found (deleted?)")
        stranger = self._stranger(_params_of(info), h.run_id)
        if stranger:
            return JenkinsBuildStatus(BuildState.LOST, external_id=h.encode(), queue_id=h.queue,
                                      build_number=h.build, reason=f"build #{h.build} {stranger}")
        if h.queue is None and info.get("queueId") is not None:
            h.queue = int(info["queueId"])
        host = info.get("builtOn") or None
        url = info.get("url") or f"{self.url}{self._job_path(h.job)}{h.build}/"
        common = dict(host=host, url=url, external_id=h.encode(), queue_id=h.queue, build_number=h.build)
        if info.get("building") or info.get("result") is None:
            started = info.get("timestamp") or 0
            minutes = max(0.0, (time.time() * 1000 - started) / 60000.0) if started else 0.0
            return JenkinsBuildStatus(BuildState.RUNNING, host_minutes=minutes, **common)
        result = str(info.get("result"))
        minutes = (info.get("duration") or 0) / 60000.0
        state, reason = BuildState.DONE, ""
        if result in ("FAILURE", "ABORTED") and host and self._agent_gone(host):
            state, reason = BuildState.LOST, f"agent {host} went offline during the build"
        status = JenkinsBuildStatus(state, rc=_RC.get(result), host_minutes=minutes, result=result,
                                    reason=reason or f"Jenkins result {result}", **common)
        self._finished[(h.job, h.build)] = status
        return status

    def _agent_gone(self, host: str) -> bool:
        try:
            data = self._json("list agents", "computer/api/json?tree=computer[displayName,offline]")
        except ExecutorError:
            return False
        for c in data.get("computer") or []:
            if c.get("displayName") == host:
                return bool(c.get("offline"))
        return True  # the agent is gone from the node list

    def last_result(self, handle: str) -> Optional[str]:
        """The Jenkins result string of the last poll of ``handle`` (None while
        queued or running, or if never polled)."""
        s = self._last.get(self._key(handle))
        return s.result if s else None

    def console(self, handle: str) -> Iterator[str]:
        """The console as lines (no line ends), read with progressiveText in
        chunks; follows a running build until Jenkins says there is no more data.
        Nothing for a request that never became a build."""
        h = Handle.decode(handle, self.job)
        if h.build is None:
            status = self.poll(handle)
            if status.external_id:
                h = Handle.decode(status.external_id, self.job)
            if h.build is None:
                return
        base = f"{self.url}{self._job_path(h.job)}{h.build}/logText/progressiveText"
        what = f"read console of {h.job} #{h.build}"
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        pending = ""
        start = 0
        failures = 0
        while True:
            try:
                resp = self._call(what, lambda: self._server.jenkins_request(
                    requests.Request("GET", f"{base}?start={start}"), stream=True))
            except jenkins.NotFoundException:
                raise ExecutorError(f"Jenkins {self.safe_url}: {what}: no such build (deleted?)") from None
            got = 0
            try:
                more = resp.headers.get("X-More-Data", "").lower() == "true"
                size = int(resp.headers.get("X-Text-Size") or -1)
                if size >= 0 and size < start:  # Jenkins restarted the text ("rolled over")
                    size = start
                for chunk in resp.iter_content(self.chunk_size):
                    if not chunk:
                        continue
                    got += len(chunk)
                    lines = (pending + decoder.decode(chunk)).split("\n")
                    pending = lines.pop()
                    yield from lines
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
                # Resume where the bytes stopped; the decoder keeps a split character.
                start += got
                failures = 0 if got else failures + 1
                if failures > self.retries:
                    raise JenkinsUnavailable(f"Jenkins {self.safe_url}: {what} failed: {_short(e)}") from None
                self._sleep(min(self.backoff_max, self.backoff_seconds * (2 ** max(0, failures - 1))))
                continue
            finally:
                resp.close()
            start += got
            failures = 0
            if more:
                self._sleep(self.poll_seconds)
                continue
            if size >= 0 and start < size:
                continue  # short answer: ask for the rest
            break
        pending += decoder.decode(b"", final=True)
        if pending:
            yield pending

    def cancel(self, handle: str) -> None:
        """Stop the build, or cancel the queue item if it has not started."""
        h = Handle.decode(handle, self.job)
        if h.build is None and h.queue is not None:
            self._call(f"cancel queue item {h.queue}", lambda: self._server.cancel_queue(h.queue))
            status = self._follow_queue(h)  # it may have started meanwhile
            if status is not None:
                return
        if h.build is None and h.run_id:
            found = self.find_by_run_id(h.run_id)
            if found:
                h = Handle.decode(found, self.job)
        if h.build is None:
            return
        try:
            self._call(f"stop {h.job} #{h.build}", lambda: self._server.stop_build(h.job, h.build))
        except jenkins.NotFoundException:
            pass

    # -- reattach ----------------------------------------------------------

    def reattach(self, request: RunRequest, external_id: Optional[str] = None) -> Optional[str]:
        """After a restart: the handle to follow ``request`` by, or None if
        Jenkins has no trace of it (then submit it again, same run id).

        ``external_id`` is the handle stored before the restart (None when the
        bot died between submitting and storing it). A stored handle that no
        longer leads anywhere (queue item cancelled or expired without a
        build) is looked up by run id instead. A build or queue item is
        adopted only if its parameters are the request's (`request_mismatch`)."""
        self._requests[request.run_id] = request
        if external_id:
            try:
                h = Handle.decode(external_id, self.job)
            except ExecutorError:
                h = None
            if h is not None:
                h.run_id = h.run_id or request.run_id
                if h.build is not None:
                    if self._build_is_ours(h):
                        return h.encode()
                    return self.find_by_run_id(request.run_id)
                status = self.poll(h.encode())
                if status.state is not BuildState.LOST:
                    return status.external_id or h.encode()
        return self.find_by_run_id(request.run_id)

    def find_by_run_id(self, run_id: str) -> Optional[str]:
        """The handle of the queue item or recent build (last ``scan_builds``)
        of our job whose ``FLAKEBOT_RUN_ID`` is ``run_id``; None if there is none."""
        if not run_id:
            return None
        items = self._json("read the queue", "queue/api/json")
        for item in items.get("items") or []:
            task = item.get("task") or {}
            if task.get("name") != self.job.split("/")[-1]:
                continue
            if self._adoptable(_params_of(item), run_id, f"queue item {item.get('id')}"):
                return Handle(self.job, run_id, queue=int(item["id"])).encode()
        number = self._find_build(self.job, run_id)
        if number is None:
            return None
        return Handle(self.job, run_id, build=number).encode()

    def _find_build(self, job: str, run_id: str) -> Optional[int]:
        path = (f"{self._job_path(job)}api/json?tree=builds[number,queueId,"
                f"actions[parameters[name,value]]]{{0,{self.scan_builds}}}")
        try:
            data = self._json(f"list builds of {job}", path)
        except jenkins.NotFoundException:
            raise ExecutorError(f"Jenkins {self.safe_url}: no job {job!r}") from None
        for b in (data.get("builds") or [])[: self.scan_builds]:
            if self._adoptable(_params_of(b), run_id, f"build #{b.get('number')}"):
                return int(b["number"])
        return None

    # -- no adopted stranger -----------------------------------------------

    def _stranger(self, params: dict[str, str], run_id: str) -> Optional[str]:
        """Why a queue item or build followed for ``run_id`` is not the answer
        to the request of that run id (None when it is, or the request is not
        known here)."""
        request = self._requests.get(run_id)
        if request is None or not params:
            return None
        why = request_mismatch(params, request)
        return f"carries another request's parameters ({why})" if why else None

    def _adoptable(self, params: dict[str, str], run_id: str, what: str) -> bool:
        """A queue item or build found by run id is ours only if it carries the
        run id and, when the request is known, its commit, tests and iterations."""
        if params.get(PARAM_RUN_ID) != run_id:
            return False
        stranger = self._stranger(params, run_id)
        if stranger:
            log.warning("jenkins: %s has run id %s but %s; not adopting it", what, run_id, stranger)
            return False
        return True

    def _build_is_ours(self, h: Handle) -> bool:
        path = f"{self._job_path(h.job)}{h.build}/api/json"
        try:
            info = self._json(f"read build {h.job} #{h.build}", path)
        except jenkins.NotFoundException:
            return True  # deleted: poll reports it lost, as before
        return self._adoptable(_params_of(info), h.run_id, f"build #{h.build}") if h.run_id else True

    # -- misc --------------------------------------------------------------

    def version(self) -> str:
        """The server's Jenkins version (X-Jenkins header)."""
        return self._call("read the version", lambda: _version(self._server))


def request_mismatch(params: dict[str, str], request: RunRequest) -> Optional[str]:
    """Why build parameters do not answer ``request`` (run id, commit, tests,
    iterations), or None when they do.

        >>> r = RunRequest("i-c1-r1", "a" * 40, ("t1", "t2"), 5)
        >>> p = {PARAM_RUN_ID: "i-c1-r1", PARAM_COMMIT: "a" * 40, PARAM_TESTS: "t1 t2", PARAM_ITERATIONS: "5"}
        >>> request_mismatch(p, r) is None, request_mismatch({**p, PARAM_COMMIT: "b" * 40}, r)
        (True, 'commit bbbbbbbbbb, asked aaaaaaaaaa')
    """
    got_tests = tuple(t for t in re.split(r"[\s,]+", params.get(PARAM_TESTS) or "") if t)
    for name, got, want in (
        ("run id", params.get(PARAM_RUN_ID, ""), request.run_id),
        ("commit", params.get(PARAM_COMMIT, ""), request.commit),
        ("tests", " ".join(got_tests), " ".join(request.tests)),
        ("iterations", (params.get(PARAM_ITERATIONS) or "").strip(), str(int(request.iterations))),
    ):
        if got != want:
            short = (lambda v: v[:10]) if name == "commit" else (lambda v: v)
            return f"{name} {short(got) or '(none)'}, asked {short(want)}"
    return None


def _version(server: _Jenkins) -> str:
    req = requests.Request("GET", server.server)
    resp = server.jenkins_request(req)
    resp.close()
    return resp.headers.get("X-Jenkins", "")


def _short(e: Exception) -> str:
    """What went wrong in words a person can act on, never a library's repr."""
    if isinstance(e, _HTTPStatusError):
        return f"HTTP {e.status} at {e.url}"
    if isinstance(e, (requests.Timeout, jenkins.TimeoutException)):
        return "no answer within the HTTP timeout (check that Jenkins is up and jenkins.url)"
    if isinstance(e, requests.ConnectionError):
        return f"cannot connect: {_root_reason(e)} (check that Jenkins is up and jenkins.url)"
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"{type(e).__name__}: {text[:160]}"


def _root_reason(e: BaseException) -> str:
    """The innermost OS-level reason in an exception chain (urllib3 wraps it
    three deep): 'connection refused', 'name or service not known', ..."""
    seen: set[int] = set()
    todo: list[Any] = [e]
    while todo:
        x = todo.pop(0)
        if not isinstance(x, BaseException) or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, socket.gaierror):
            return f"cannot resolve the host name ({x.strerror or x})".lower()
        if isinstance(x, OSError) and x.errno:
            return (x.strerror or os.strerror(x.errno)).lower()
        todo += [*x.args, getattr(x, "reason", None), x.__cause__, x.__context__]
    return type(e).__name__
