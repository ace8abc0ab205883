#!/usr/bin/env python3
"""Time to the first certificate, and TLS handshakes per second beside Caddy.

    .venv/bin/python bench/acme.py [--rounds 3] [--duration 10] [--clients 2]

Starts Debian's pebble and knot on loopback (tests/acme_servers.py; pebble with its validation
sleeps off and its default 5 % nonce rejection), then:

1. First certificate: for each round, a fresh site with an empty certs/ and a `gateway serve` in
   acme mode (rfc2136 to knot). The clock starts when the process is spawned and stops at the
   first HTTPS 200 (GET /-/health, SNI gw.test) verified against pebble's root, polled every
   20 ms. Rounds are 2 s apart: knot holds an update that follows the previous one within ~1 s.
   Printed: the median and each round, and the issuance alone (certificate_requesting ->
   certificate_installed, from the gateway's log).
2. Handshakes: the last gateway's HTTPS listener and Caddy (Debian's, `tls` with the same
   certificate and key files), each measured with `openssl s_time -new` (full handshakes, no
   resumption, TLS 1.3, ECDSA P-256) from --clients parallel processes for --duration seconds,
   in interleaved rounds. Printed: the median handshakes/s and the server's CPU time per
   handshake (utime+stime from /proc over the handshakes done; the gateway's worker process).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.acme_servers import TSIG_KEY_NAME, Knot, Pebble, free_port  # noqa: E402

BIN = Path(sys.executable).parent
ZONE = "gw.test"
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def site_config(root: Path, knot: Knot, pebble: Pebble, https_port: int) -> Path:
    (root / "tenants").mkdir(parents=True)
    config = root / "gateway.toml"
    config.write_text(f"""\
domain = "{ZONE}"
[listen]
host = "127.0.0.1"
http_port = {free_port()}
https_port = {https_port}
[paths]
run_dir = "{root}/run"
[log]
access_log = false
[tls]
mode = "acme"
[tls.acme]
directory_url = "{pebble.directory_url}"
ca_file = "{pebble.tls_ca_file}"
[tls.dns]
wait_servers = ["127.0.0.1:{knot.port}"]
[tls.rfc2136]
server = "127.0.0.1"
port = {knot.port}
tsig_key_name = "{TSIG_KEY_NAME}"
tsig_secret_file = "{knot.secret_file}"
""")
    return config


def verified_200(port: int, context: ssl.SSLContext) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, \
                context.wrap_socket(raw, server_hostname=ZONE) as tls:
            connection = http.client.HTTPSConnection(ZONE, port, context=context)
            connection.sock = tls
            connection.request("GET", "/-/health")
            return connection.getresponse().status == 200
    except (OSError, ssl.SSLError):
        return False


def first_certificate(root: Path, knot: Knot, pebble: Pebble, context: ssl.SSLContext
                      ) -> tuple[float, float, subprocess.Popen[bytes], Path]:
    port = free_port()
    config = site_config(root, knot, pebble, port)
    log = root / "gateway.log"
    started = time.perf_counter()
    with open(log, "wb") as stderr:
        process = subprocess.Popen([str(BIN / "gateway"), "--config", str(config), "serve"],
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = started + 60
    while not verified_200(port, context):
        if time.perf_counter() > deadline or process.poll() is not None:
            raise SystemExit(f"no verified HTTPS 200 within 60 s; see {log}")
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    events = {e["event"]: e for e in map(json.loads, log.read_text().splitlines())}
    issuance = _seconds(events["certificate_installed"]["time"]) - _seconds(
        events["certificate_requesting"]["time"])
    return elapsed, issuance, process, config


def worker_pid(log: Path) -> int:
    """The process serving requests: `gateway serve` is the master, the worker its child."""
    for line in log.read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "gateway_listening":
            return int(event["worker"])
    raise SystemExit(f"no gateway_listening event in {log}")


def _seconds(iso: str) -> float:
    return time.mktime(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S")) + float(iso[19:-1] or 0)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_caddy(root: Path, chain: Path, key: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    caddyfile = root / "Caddyfile"
    caddyfile.write_text(f"""\
{{
	admin off
	auto_https disable_redirects
	default_sni {ZONE}
	log default {{
		output discard
	}}
}}
https://{ZONE}:{port}, https://*.{ZONE}:{port} {{
	bind 127.0.0.1
	tls {chain} {key}
	respond /-/health "ok" 200
}}
""")
    environment = {**os.environ, "XDG_CONFIG_HOME": str(root / "config"),
                   "XDG_DATA_HOME": str(root / "data")}
    with open(root / "caddy.log", "wb") as log:  # the child keeps its own copy of the fd
        process = subprocess.Popen(["caddy", "run", "--config", str(caddyfile),
                                    "--adapter", "caddyfile"], env=environment,
                                   stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"caddy did not start; see {root / 'caddy.log'}") from None
            time.sleep(0.05)


def handshakes(port: int, pid: int, duration: int, clients: int) -> tuple[float, float]:
    """(handshakes/s, server CPU µs per handshake) with `clients` s_time processes."""
    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    runs = [subprocess.Popen(["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new",
                              "-time", str(duration)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True) for _ in range(clients)]
    total = 0
    for run in runs:
        output, _ = run.communicate()
        match = re.search(r"(\d+) connections in [\d.]+ real seconds", output)
        if match is None:
            raise SystemExit(f"openssl s_time said: {output}")
        total += int(match.group(1))
    elapsed = time.perf_counter() - started  # s_time's own clock counts whole seconds
    cpu = cpu_seconds(pid) - cpu_before
    return total / elapsed, cpu / max(total, 1) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--clients", type=int, default=2)
    args = parser.parse_args()
    for tool in ("pebble", "knotd", "caddy", "openssl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: make debs bench-debs")

    with tempfile.TemporaryDirectory(prefix="bench-acme-") as scratch:
        root = Path(scratch)
        knot = Knot(root / "knot", ZONE).start()
        pebble = Pebble(root / "pebble", knot.port).start()
        gateway: subprocess.Popen[bytes] | None = None
        caddy: subprocess.Popen[bytes] | None = None
        try:
            context = ssl.create_default_context(cadata=pebble.root_pem().decode())
            firsts: list[tuple[float, float]] = []
            for n in range(args.rounds):
                if gateway is not None:
                    stop(gateway)
                    time.sleep(2)
                elapsed, issuance, gateway, config = first_certificate(
                    root / f"site{n}", knot, pebble, context)
                firsts.append((elapsed, issuance))
            totals = [f for f, _ in firsts]
            print(f"empty certs/ -> first verified HTTPS 200: median"
                  f" {statistics.median(totals):.2f} s ({', '.join(f'{t:.2f}' for t in totals)});"
                  " issuance alone: median"
                  f" {statistics.median(i for _, i in firsts):.2f} s"
                  f" ({', '.join(f'{i:.2f}' for _, i in firsts)})")

            assert gateway is not None
            gateway_port = int(re.findall(r"https_port = (\d+)", config.read_text())[0])
            certificate = config.parent / "certs" / "certificate.pem"
            pem = certificate.read_text()
            cut = pem.rindex("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----\n")
            (root / "chain.pem").write_text(pem[:cut])
            (root / "key.pem").write_text(pem[cut:])
            (root / "caddy").mkdir()
            caddy, caddy_port = start_caddy(root / "caddy", root / "chain.pem", root / "key.pem")
            for name, port in (("gateway", gateway_port), ("caddy", caddy_port)):
                if not verified_200(port, context):
                    raise SystemExit(f"{name} does not answer a verified HTTPS 200")
            targets = {"gateway": (gateway_port, worker_pid(config.parent / "gateway.log")),
                       "caddy": (caddy_port, caddy.pid)}
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
            for n in range(args.rounds):
                order = list(targets) if n % 2 == 0 else list(reversed(targets))
                for name in order:
                    results[name].append(handshakes(*targets[name], args.duration, args.clients))
            print(f"TLS handshakes (openssl s_time -new, {args.clients} clients,"
                  f" {args.duration} s x {args.rounds} rounds, TLS 1.3, ECDSA P-256):")
            for name, rounds in results.items():
                rates = [r for r, _ in rounds]
                cpu = [c for _, c in rounds]
                print(f"  {name:<8} {statistics.median(rates):7.0f}/s"
                      f" ({', '.join(f'{r:.0f}' for r in rates)});"
                      f" server CPU {statistics.median(cpu):.0f} µs per handshake")
            ratio = statistics.median(r for r, _ in results["gateway"]) / statistics.median(
                r for r, _ in results["caddy"])
            print(f"  gateway / caddy: {ratio:.2f}")
        finally:
            for process in (gateway, caddy):
                if process is not None:
                    stop(process)
            pebble.stop()
            knot.stop()


if __name__ == "__main__":
    main()
