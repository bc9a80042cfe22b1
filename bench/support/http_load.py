"""Load and measurement helpers of the HTTP benchmarks: wrk runs, paced request streams, process CPU and memory."""

import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load() -> float:
    return round(os.getloadavg()[0], 1)


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    found = []
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = path.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(path.parent.name))
    return found


def tree_rss(pid: int) -> float:
    return rss_mb(pid) + sum(tree_rss(child) for child in children(pid))


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its live children."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (FileNotFoundError, ProcessLookupError):
        own = 0.0
    return own + sum(tree_cpu(child) for child in children(pid))


class BackendCpu(threading.Thread):
    """The CPU seconds of the PostgreSQL server processes connected to ``db``, sampled every half
    second: the web closes a connection after 60 s, and a closed one keeps its last sample."""

    def __init__(self, db: str):
        super().__init__(daemon=True)
        self.query = f"SELECT pid FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.stopped = threading.Event()
        self.sample(self.first)

    def sample(self, into: dict[int, float]) -> None:
        cmd = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-Atc", self.query]
        for pid in subprocess.run(cmd, capture_output=True, text=True).stdout.split():
            cpu = tree_cpu(int(pid))
            if cpu:
                into[int(pid)] = cpu

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            self.sample(self.last)

    def stop(self) -> float:
        self.stopped.set()
        self.join()
        self.sample(self.last)
        return sum(cpu - self.first.get(pid, 0.0) for pid, cpu in self.last.items())


def wrk(
    url, key, script_path: Path, body_lua: str, seconds: int, connections: int, warmup: int = 0, on_start=None
) -> dict:
    """One wrk run after ``warmup`` seconds of the same load; ``on_start`` is called as the measured run begins."""
    script_path.write_text(
        "counter = 0\n"
        'wrk.method = "POST"\n'
        + (f'wrk.headers["Authorization"] = "Bearer {key}"\n' if key else "")
        + 'wrk.headers["Content-Type"] = "application/json"\n'
        "request = function()\n"
        "  counter = counter + 1\n"
        f"  local body = {body_lua}\n"
        "  return wrk.format(nil, nil, nil, body)\n"
        "end\n"
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("STATUS non2xx=%d errors=%d\\n", summary.errors.status, '
        "summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))\n"
        "end\n"
    )
    if warmup:  # the same load first, unmeasured: every server thread has its connections and caches
        command = ["wrk", "-t2", f"-c{connections}", f"-d{warmup}s", "-s", str(script_path), url]
        subprocess.run(command, capture_output=True, check=True)
    started_load = load()
    if on_start:
        on_start()
    result = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script_path), url],
        capture_output=True,
        text=True,
        check=True,
    )
    out = result.stdout

    def lat(label):
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)", out, re.MULTILINE)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    status = re.search(r"STATUS non2xx=(\d+) errors=(\d+)", out)
    return {
        "requests_per_s": round(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), 1),
        "p50_ms": round(lat(50), 1),
        "p99_ms": round(lat(99), 1),
        "non_2xx": int(status.group(1)),
        "socket_errors": int(status.group(2)),
        "load": [started_load, load()],
    }


class Paced:
    """Send ``rate`` requests a second for ``seconds`` from a pool of threads; keep what each answered."""

    def __init__(self, rate: int, seconds: float, make_request, threads: int = 32):
        import httpx

        self.rate, self.total = rate, int(rate * seconds)
        self.make_request = make_request
        self.sent: dict[int, float] = {}
        self.answers: dict[int, object] = {}
        self.errors = 0
        self.clients = [httpx.Client(timeout=30) for _ in range(threads)]
        self.lock = threading.Lock()

    def run(self) -> None:
        t0 = time.time() + 0.2
        interval = 1.0 / self.rate

        def worker(k: int) -> None:
            client = self.clients[k]
            for i in range(k, self.total, len(self.clients)):
                delay = t0 + i * interval - time.time()
                if delay > 0:
                    time.sleep(delay)
                started = time.time()
                try:
                    answer = self.make_request(client, i)
                except Exception:  # noqa: BLE001 (counted)
                    answer = None
                with self.lock:
                    self.sent[i] = started
                    if answer is None:
                        self.errors += 1
                    else:
                        self.answers[i] = answer

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(self.clients))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.ended = time.time()
