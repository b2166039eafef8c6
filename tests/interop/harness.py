"""What the interop scripts share: loopback ports, waiting for a server, moto's server, and the
tally of checks. Each script runs from .ci/interop with the virtualenv's python."""
import json, os, re, socket, subprocess, sys, time, urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port, seconds=10):
    """Until something accepts on 127.0.0.1:port; bounded."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def start_moto(port, no_auth_calls):
    """moto's server on 127.0.0.1:port, checking signatures after its first `no_auth_calls` calls."""
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(no_auth_calls), AWS_ACCESS_KEY_ID="test",
               AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    moto = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(port)
    return moto


class Tally:
    """Counts checks, prints each, and gives the exit status."""

    def __init__(self):
        self.passed, self.failed = 0, 0

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"ok   {name}")
        else:
            self.failed += 1
            print(f"FAIL {name} {detail}")

    def summary(self):
        print(f"{self.passed} passed, {self.failed} failed")
        return 1 if self.failed else 0


def http_json(url, body=None):
    """GET url, or POST body as JSON; (status, text), whatever the status."""
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 method="POST" if body is not None else "GET", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def start_emulator(iam_join, port, work):
    """`iam-join emulator` on 127.0.0.1:port, its files in work; (process, the variables its
    export lines set)."""
    emu = subprocess.Popen([iam_join, "emulator", "--listen", f"127.0.0.1:{port}", "--dir", work],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    exports = {}
    for line in iter(emu.stdout.readline, ""):
        for k, v in re.findall(r"(?:^|\s)(AWS_[A-Z_]+)=(\S+)", line if line.startswith("export") else ""):
            exports[k] = v
        if "AWS_ACCESS_KEY_ID" in exports and "AWS_ENDPOINT_URL_STS" in exports:
            break
    wait_for(port)
    return emu, exports


def stop(*procs):
    """Stops the processes a script started (SIGTERM to each still running, then waits)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        p.wait(timeout=20)
