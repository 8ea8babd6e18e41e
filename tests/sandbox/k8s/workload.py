"""The simulated application: every started pod calls the platform with the token it holds.

One scheduler thread hands due calls to a small pool of workers, so a fleet of a hundred
pods costs a few threads, and a slow platform slows the calls down instead of queueing
them up: a pod never has more than one request in flight.
"""

from __future__ import annotations

import heapq
import http.client
import logging
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from tests.sandbox.k8s.controller import Controller, PodRuntime

log = logging.getLogger("k8s-emulator.workload")

TENANTS_PATH = "/api/v1/tenants"
SCAN_INTERVAL = 0.1  # how soon a freshly started pod makes its first call, at most


class Workload:
    def __init__(
        self, controller: Controller, platform_url: str, platform_ca: str | None = None, workers: int = 8
    ) -> None:
        self.controller = controller
        parts = urlsplit(platform_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.https else 80)
        self.base_path = parts.path.rstrip("/")
        self.ssl_context: ssl.SSLContext | None = None
        if self.https:
            self.ssl_context = ssl.create_default_context(cafile=platform_ca)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="workload")
        self.local = threading.local()
        self.stopping = threading.Event()
        self.returned: list[str] = []  # uids whose call finished (guarded by the controller's pods_lock)
        self.thread = threading.Thread(target=self._run, name="workload-scheduler", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        # A heap of (next call time, pod uid): each pass costs O(due pods), not O(all pods).
        # New pods are picked up by a scan a few times a second; finished calls come back
        # through ``self.returned`` and are pushed again at their next call time.
        heap: list[tuple[float, str]] = []
        scheduled: set[str] = set()
        next_scan = 0.0
        while not self.stopping.is_set():
            now = time.monotonic()
            due: list[tuple[PodRuntime, str]] = []
            with self.controller.pods_lock:
                pods = self.controller.pods
                while self.returned:
                    uid = self.returned.pop()
                    pod = pods.get(uid)
                    if pod is None:
                        scheduled.discard(uid)
                    else:
                        heapq.heappush(heap, (pod.next_call, uid))
                if now >= next_scan:
                    next_scan = now + SCAN_INTERVAL
                    scheduled &= pods.keys()
                    for uid, pod in pods.items():
                        if uid not in scheduled and pod.started:
                            scheduled.add(uid)
                            heapq.heappush(heap, (pod.next_call, uid))
                while heap and heap[0][0] <= now:
                    uid = heapq.heappop(heap)[1]
                    pod = pods.get(uid)
                    if pod is None:
                        scheduled.discard(uid)
                    elif pod.finished:
                        pass  # its container completed (a Job's pod): it calls no more, and stays scheduled-off
                    elif not pod.token:
                        heapq.heappush(heap, (now + pod.request_interval, uid))  # nothing to call with yet
                    else:
                        pod.in_flight = True
                        due.append((pod, pod.token))
            for pod, token in due:
                try:
                    self.pool.submit(self._call, pod, token)
                except RuntimeError:
                    return  # shutting down
            wait = min(heap[0][0] - time.monotonic(), 0.05) if heap else 0.05
            time.sleep(max(wait, 0.002))

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            if self.https:
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=5, context=self.ssl_context)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
            self.local.conn = conn
        return conn

    def _call(self, pod: PodRuntime, token: str) -> None:
        outcome = "error"
        try:
            for attempt in (1, 2):
                conn = self._connection()
                try:
                    conn.request(
                        "GET",
                        self.base_path + TENANTS_PATH,
                        headers={"Authorization": f"Bearer {token}", "User-Agent": f"sandbox-pod/{pod.name}"},
                    )
                    response = conn.getresponse()
                    response.read()
                    outcome = str(response.status)
                    if response.getheader("Connection", "").lower() == "close" or response.version == 10:
                        conn.close()
                    break
                except (OSError, http.client.HTTPException):
                    # A kept-alive connection the server closed meanwhile: one fresh retry.
                    conn.close()
                    self.local.conn = None
                    if attempt == 2:
                        outcome = "error"
        finally:
            with self.controller.pods_lock:
                if pod.uid in self.controller.pods:
                    pod.requests[outcome] = pod.requests.get(outcome, 0) + 1
                else:  # the pod ended while this call was on its way: count it with the finished ones
                    finished = self.controller.finished_requests
                    finished[outcome] = finished.get(outcome, 0) + 1
                pod.in_flight = False
                pod.next_call = time.monotonic() + pod.request_interval
                self.returned.append(pod.uid)
