#!/usr/bin/env python3
"""Instructions PostgreSQL executes to record accepted callbacks, counted with
valgrind (callgrind) on a single-user backend: a figure that does not move
with the load of the machine, unlike CPU time.

    python3 tests/bench/pg_instructions.py --bin build/release/daemon/idv-callbackd \\
        [--batches 1,32,64] [--function record_callback_batch|record_callbacks] [--nonfinal]

A throwaway cluster gets the schema of the binary given (its `migrate`) and
20,000 registered transactions, then is stopped. For each batch size, the same
script of batches is replayed twice by `postgres --single` under callgrind:
once with a few warm-up batches only, once with the measured batches after
them; the difference, divided, is the cost per callback (and per batch). The
same is done for pgbench's transaction of the benchmark (one single-row INSERT
... ON CONFLICT DO NOTHING, prepared). Single-user mode parses each call's
text (the daemon prepares its statement once), so both sides carry a little
parsing; no network, no WAL flush wait (fsync off): what is counted is
PostgreSQL's own work. Needs valgrind (Debian package `valgrind`); runs as
root (the cluster belongs to postgres). A few minutes.
"""
import argparse
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

PG_BINDIR = "/usr/lib/postgresql/15/bin"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def as_pg(cmd):
    return ["runuser", "-u", "postgres", "--"] + cmd if os.geteuid() == 0 else cmd


def template(workdir, binary, nreg):
    """A stopped cluster with the binary's schema and nreg transactions."""
    d = os.path.join(workdir, "template")
    os.makedirs(d)
    if os.geteuid() == 0:
        shutil.chown(d, "postgres", "postgres")
    data = os.path.join(d, "data")
    sh(as_pg([os.path.join(PG_BINDIR, "initdb"), "-D", data, "-A", "trust", "-U", "postgres",
              "--no-sync", "-E", "UTF8"]))
    with open(os.path.join(data, "postgresql.auto.conf"), "a") as f:
        f.write(f"unix_socket_directories = '{d}'\nlisten_addresses = ''\nport = 5499\n"
                "shared_buffers = 256MB\nautovacuum = off\nmax_wal_size = 4GB\n")
    sh(as_pg([os.path.join(PG_BINDIR, "pg_ctl"), "-D", data, "-w", "-l",
              os.path.join(d, "log"), "start"]))
    try:
        url = f"host={d} port=5499 user=postgres dbname=postgres"
        sh([binary, "migrate"], env=dict(os.environ, IDV_DATABASE_URL=url))

        def psql(q):
            sh(["psql", "-X", "-q", "-h", d, "-p", "5499", "-U", "postgres", "-c", q])
        psql("SET session_replication_role = replica;"
             " INSERT INTO idv.transactions (transaction_id, merchant_biz_id,"
             " callback_token_sha256, status, origin, expires_at)"
             " SELECT 'mb' || g, 'biz' || g, sha256(convert_to('mb-token-' || g, 'UTF8')),"
             f" 'initiated', 'registered', now() + interval '7 days'"
             f" FROM generate_series(1, {nreg}) g")
        psql("CREATE TABLE public.bench_pgbench (transaction_id text PRIMARY KEY,"
             " passed text NOT NULL, sub_code text NOT NULL,"
             " received_at timestamptz NOT NULL DEFAULT now(), instance text NOT NULL)")
        psql("VACUUM ANALYZE")
        psql("CHECKPOINT")
    finally:
        sh(as_pg([os.path.join(PG_BINDIR, "pg_ctl"), "-D", data, "-w", "-m", "fast", "stop"]))
    return data


def instructions(workdir, data, lines):
    """Instructions of a single-user backend running lines (one statement
    each) on a copy of the template."""
    run = tempfile.mkdtemp(prefix="run-", dir=workdir)
    if os.geteuid() == 0:
        shutil.chown(run, "postgres", "postgres")
    copy = os.path.join(run, "data")
    sh(["cp", "-a", data, copy])
    script = os.path.join(run, "in.sql")
    with open(script, "w") as f:
        for line in lines:
            f.write(line + ";\n\n")
    out = os.path.join(run, "callgrind.out")
    p = subprocess.run(as_pg(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                              os.path.join(PG_BINDIR, "postgres"), "--single", "-j", "-D", copy,
                              "-c", "fsync=off", "postgres"]),
                       stdin=open(script), capture_output=True, text=True)
    shutil.rmtree(run, ignore_errors=True)
    errors = [ln for ln in (p.stdout + p.stderr).splitlines() if "ERROR" in ln]
    m = re.search(r"Collected : (\d+)", p.stderr)
    if errors or not m:
        sys.exit(f"pg_instructions: the replay failed: {errors[:3] or p.stderr[-1000:]}")
    return int(m.group(1))


def batch_call(function, first, n, final):
    ids = range(first, first + n)

    def arr(f):
        return "'{" + ",".join(f'"{f(g)}"' for g in ids) + "}'"
    args = (arr(lambda g: f"mb{g}"),
            arr(lambda g: hashlib.sha256(f"mb-token-{g}".encode()).hexdigest()),
            arr(lambda g: "Y"), arr(lambda g: "200"), arr(lambda g: "127.0.0.1"))
    return (f"SELECT idv.{function}({', '.join(args)}, 'bench', {'true' if final else 'false'})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True, help="the daemon binary whose schema is measured")
    ap.add_argument("--batches", default="1,32,64")
    ap.add_argument("--function", default="record_callback_batch",
                    help="record_callbacks for versions before sql/0005")
    ap.add_argument("--nonfinal", action="store_true",
                    help="with Alibaba credentials: callback_received and a work item")
    a = ap.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("pg_instructions: valgrind is missing (apt-get install valgrind)")
    work = tempfile.mkdtemp(prefix="idv-instr-")
    os.chmod(work, 0o755)
    try:
        data = template(work, os.path.abspath(a.bin), 20000)
        warm = 3
        print("| batch | instructions per callback | per batch |")
        print("| ---: | ---: | ---: |")
        for b in [int(x) for x in a.batches.split(",")]:
            meas = max(4, 128 // b)
            calls = [batch_call(a.function, 1 + k * b, b, not a.nonfinal)
                     for k in range(warm + meas)]
            i0 = instructions(work, data, calls[:warm])
            i1 = instructions(work, data, calls)
            print(f"| {b} | {(i1 - i0) / (meas * b):,.0f} | {(i1 - i0) / meas:,.0f} |", flush=True)
        r = random.Random(1)
        prep = ("PREPARE ins(bigint) AS INSERT INTO public.bench_pgbench (transaction_id, passed,"
                " sub_code, instance) VALUES ('pgb' || $1, 'Y', '200', 'pgbench')"
                " ON CONFLICT DO NOTHING")
        ins = [f"EXECUTE ins({r.randint(1, 10**15)})" for _ in range(420)]
        i0 = instructions(work, data, [prep] + ins[:20])
        i1 = instructions(work, data, [prep] + ins)
        print(f"\npgbench's transaction (one prepared INSERT ... ON CONFLICT DO NOTHING): "
              f"{(i1 - i0) / 400:,.0f} instructions")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
