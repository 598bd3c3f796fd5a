#!/usr/bin/env python3
"""Small helpers for bench/run.sh (standard library only).

  helper.py free-port
  helper.py start LOG ERRLOG BINARY [ARGS...]   spawn the server, wait for GET /, print "PID MS"
  helper.py creds DATA_DIR                      print "CLIENT_ID CLIENT_SECRET" from secrets.json
  helper.py token PORT CLIENT_ID CLIENT_SECRET  print an access token
  helper.py prep PORT TOKEN OUTDIR              write ids.txt, cursors.txt; print "TOTAL DEPTH"
  helper.py rss PID OUT                         sample peak RssAnon/RssFile of PID into OUT
  helper.py cpu PID                             print "CPU_S WAIT_S" of PID (CPU used, run-queue wait)
"""
import http.client
import json
import os
import socket
import subprocess
import sys
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    print(port)


def start(log, errlog, argv):
    """Cold start: from spawning the process until GET / answers 200."""
    port = int(os.environ["PORT"])
    out = open(log, "ab")
    err = open(errlog, "ab")
    t0 = time.perf_counter_ns()
    proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with status {proc.returncode} before answering GET / (see {errlog})")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request("GET", "/")
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                ms = (time.perf_counter_ns() - t0) / 1e6
                print(proc.pid, f"{ms:.1f}")
                return
        except OSError:
            pass
        time.sleep(0.0005)
    proc.kill()
    sys.exit("server did not answer GET / within 120 s")


def creds(data_dir):
    with open(os.path.join(data_dir, "secrets.json")) as f:
        doc = json.load(f)
    versions = doc["secrets"]["local-dev-client"]
    value = json.loads(versions[0]["value"])
    print(value["clientId"], value["clientSecret"])


def call(conn, method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    if r.status // 100 != 2:
        sys.exit(f"{method} {path}: HTTP {r.status}: {data[:300]!r}")
    return json.loads(data)


def token(port, client_id, secret):
    c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)
    body = json.dumps({"clientId": client_id, "clientSecret": secret})
    doc = call(c, "POST", "/api/auth/token", body, {"Content-Type": "application/json"})
    print(doc["access_token"])


def prep(port, tok, outdir):
    """Ids spread over the whole data set, and list cursors at depth (page 1000 or half way)."""
    c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=300)
    h = {"Authorization": "Bearer " + tok}
    first = call(c, "GET", "/api/customers?pageSize=200", headers=h)
    total = first["total"]
    pages200 = max(1, first["totalPages"])
    want = min(20, pages200)
    ids = []
    for i in range(want):
        page = 1 + (i * (pages200 - 1)) // max(1, want - 1)
        doc = first if page == 1 else call(c, "GET", f"/api/customers?pageSize=200&page={page}", headers=h)
        ids.extend(item["id"] for item in doc["data"])
    with open(os.path.join(outdir, "ids.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    # The same depth by offset (page=DEPTH) and by cursor (follow nextCursor DEPTH-1 times).
    pages50 = max(1, (total + 49) // 50)
    depth = 1000 if pages50 >= 1020 else max(2, pages50 // 2)
    cursors = []
    cur = None
    page = 1
    while page < depth + 16:
        path = "/api/customers?pageSize=50" + (f"&cursor={cur}" if cur else "")
        doc = call(c, "GET", path, headers=h)
        cur = doc.get("nextCursor")
        if not cur:
            break
        page += 1
        if page >= depth:
            cursors.append(cur)
    if not cursors:
        sys.exit("could not collect any cursor at depth")
    with open(os.path.join(outdir, "cursors.txt"), "w") as f:
        f.write("\n".join(cursors) + "\n")
    print(total, depth, len(ids), len(cursors))


def cpu(pid):
    """CPU seconds the process used (utime+stime, live and exited threads) and the seconds its
    live threads spent runnable but waiting for a core (from /proc/PID/task/*/schedstat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:  # gone: run.sh notices and reports it
        print("0 0")
        return
    ticks = os.sysconf("SC_CLK_TCK")
    wait_ns = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    wait_ns += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                pass
    except OSError:
        pass
    print(f"{(int(fields[11]) + int(fields[12])) / ticks:.2f} {wait_ns / 1e9:.3f}")


def rss(pid, out, interval="0.2"):
    """Samples RssAnon and RssFile of PID until it exits (or this sampler is stopped) and keeps
    the peak of each in OUT as "ANON_KB FILE_KB": VmHWM alone cannot tell the server's own
    memory from the SQLite file it maps (counted once per mapping connection)."""
    peak_anon = peak_file = 0
    while True:
        try:
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            return
        peak_anon = max(peak_anon, int(status.get("RssAnon", "0 kB").split()[0]))
        peak_file = max(peak_file, int(status.get("RssFile", "0 kB").split()[0]))
        with open(out + ".tmp", "w") as f:
            f.write(f"{peak_anon} {peak_file}\n")
        os.replace(out + ".tmp", out)
        time.sleep(float(interval))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "free-port":
        free_port()
    elif cmd == "start":
        start(args[0], args[1], args[2:])
    elif cmd == "creds":
        creds(args[0])
    elif cmd == "token":
        token(*args)
    elif cmd == "prep":
        prep(*args)
    elif cmd == "rss":
        rss(*args)
    elif cmd == "cpu":
        cpu(args[0])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
