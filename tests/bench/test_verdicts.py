#!/usr/bin/env python3
"""The benchmark's verdicts, from synthetic runs (no PostgreSQL, no daemon):
what the table says for each comparison, above all for a fixed-rate
comparison in which no run was valid (BOUND when its p99 is under the target
anyway, INVALID when not). Usage: test_verdicts.py CASE, or --list."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "lib"))
import bench  # noqa: E402


def run(workload, side, *, rps=1000.0, p99=None, lag99=None, valid=True, busy=False):
    r = {"workload": workload, "side": side, "rps": rps, "requests": 1000,
         "cpu_s": {"daemon": 0.01, "postgres": 0.03, "client": 0.01}, "other_load": 0.0}
    if p99 is not None:
        r["latency_ms"] = {"p50": p99 / 4, "p99": p99, "p999": p99, "max": p99}
    if lag99 is not None:
        r["send_lag_ms"] = {"p50": lag99 / 3, "p99": lag99, "max": lag99}
        r["valid"] = valid
    if busy:
        r["busy"] = True
    return r


def verdicts(b_daemon=15000.0, b_pgbench=10000.0, malformed=(), accepted=(), b_busy=False,
             e_busy=False):
    """The table's verdict per comparison, by the start of its name."""
    runs = []
    for _ in range(3):
        runs.append(run("b_accepted", "daemon", rps=b_daemon, busy=b_busy))
        runs.append(run("b_accepted", "pgbench", rps=b_pgbench, busy=b_busy))
        runs.append(run("e_accepted", "pgbench", rps=5000, p99=10.0))
    runs += [run("e_accepted", "daemon", rps=5000, p99=p, lag99=0.05, valid=v)
             for p, v in accepted or [(5.0, True)] * 3]
    runs += [run("e_malformed", "daemon", rps=5000, p99=p, lag99=0.07, valid=v, busy=e_busy)
             for p, v in malformed or [(1.0, True)] * 3]
    b = bench.Bench.__new__(bench.Bench)
    b.st = bench.Settings(False)
    b.results = {"runs": runs, "rates": {"accepted": 5000.0}}
    rows, _ = b.table()
    return {r["workload"].split(" p99")[0].split(" vs")[0]: bench.VERDICT[r["pass"]]
            for r in rows}


def check(got, key, want):
    if got[key] != want:
        raise SystemExit(f"{key}: {got[key]}, expected {want} (all: {got})")


def malformed_invalid_under_target_is_bound():
    # pgbench's p99 10 ms; 0.4 ms measured with a 0.07 ms lag: no run valid.
    got = verdicts(malformed=[(0.4, False)] * 3)
    check(got, "(e) malformed", "BOUND")
    check(got, "(e) accepted", "PASS")


def malformed_invalid_over_target_is_invalid():
    # 13 ms measured > 1.25 x 10 ms, and no run valid: nothing can be said.
    check(verdicts(malformed=[(13.0, False)] * 3), "(e) malformed", "INVALID")


def valid_runs_decide_over_invalid_ones():
    # One valid run of 12 ms (a miss) decides, whatever the invalid ones say.
    got = verdicts(malformed=[(0.4, False), (12.9, True), (0.4, False)])
    check(got, "(e) malformed", "MISS")
    check(verdicts(malformed=[(0.4, False), (11.0, True), (0.4, False)]), "(e) malformed",
          "PASS")


def busy_fixed_rate_is_busy_unless_invalid():
    # Disturbed rounds give no verdict, valid or bound; over the target with
    # no valid run it stays INVALID.
    check(verdicts(malformed=[(13.0, True)] * 3, e_busy=True), "(e) malformed", "BUSY")
    check(verdicts(malformed=[(0.4, False)] * 3, e_busy=True), "(e) malformed", "BUSY")
    check(verdicts(malformed=[(13.0, False)] * 3, e_busy=True), "(e) malformed", "INVALID")


def accepted_over_target_is_miss():
    check(verdicts(accepted=[(12.6, True)] * 3), "(e) accepted", "MISS")


def throughput_verdicts():
    check(verdicts(b_daemon=15000, b_pgbench=10000), "(b) accepted/s", "PASS")
    check(verdicts(b_daemon=14900, b_pgbench=10000), "(b) accepted/s", "MISS")
    check(verdicts(b_daemon=14900, b_pgbench=10000, b_busy=True), "(b) accepted/s", "BUSY")


CASES = [malformed_invalid_under_target_is_bound, malformed_invalid_over_target_is_invalid,
         valid_runs_decide_over_invalid_ones, busy_fixed_rate_is_busy_unless_invalid,
         accepted_over_target_is_miss, throughput_verdicts]

if __name__ == "__main__":
    if sys.argv[1:] == ["--list"]:
        print("\n".join(c.__name__ for c in CASES))
        sys.exit(0)
    by_name = {c.__name__: c for c in CASES}
    for name in sys.argv[1:] or by_name:
        if name not in by_name:
            raise SystemExit(f"no such case: {name}")
        by_name[name]()
        print(f"ok {name}")
