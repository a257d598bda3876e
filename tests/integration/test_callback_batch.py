#!/usr/bin/env python3
"""The recording of callbacks in PostgreSQL (sql/0005): the row lock of the
transaction's UPDATE decides which result is first; a batch whose row was
changed by someone else after its snapshot decides again with a fresh one;
the first result is written once; the status events of callbacks (written by
idv.record_callback_batch itself) and of every other writer (the status
trigger) both appear.

The races are made deterministic: a psql session holds the transaction's row
(an open transaction that changed it), the daemon's callback waits on that
lock (seen in pg_stat_activity), then the session commits. No assertion is
about time."""
import os
import subprocess
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
import idvtest  # noqa: E402
from idvtest import check, check_eq, wait_until  # noqa: E402


class Session:
    """A psql coprocess holding one open transaction. run() sends SQL and
    returns its output once psql printed it (a marker line follows every
    command)."""

    MARK = "--done--"

    def __init__(self, pg):
        self.proc = subprocess.Popen(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=0",
                                      "-h", pg.sock, "-p", str(pg.port), "-U", "postgres",
                                      "-d", "postgres"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)

    def run(self, sql):
        self.proc.stdin.write(sql.rstrip().rstrip(";") + f";\n\\echo {self.MARK}\n")
        self.proc.stdin.flush()
        out = []
        for line in self.proc.stdout:
            if line.rstrip("\n") == self.MARK:
                return "\n".join(out)
            out.append(line.rstrip("\n"))
        raise idvtest.TestFailure(f"psql session ended: {out}")

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(10)


def callback_in_thread(d, tx, passed, sub, token):
    """Sends a callback from a thread; the returned dict gets "status" and
    "body" once it is answered."""
    res = {}

    def go():
        st, body, _, _ = d.callback(tx, passed, sub, token)
        res["status"], res["body"] = st, body
    t = threading.Thread(target=go, daemon=True)
    t.start()
    res["thread"] = t
    return res


def wait_daemon_blocked(pg):
    """Until a backend of the daemon waits for a lock (its batch reached the
    row the session holds)."""
    wait_until(lambda: pg.psql("SELECT count(*) FROM pg_stat_activity"
                               " WHERE application_name = 'idv-callbackd'"
                               " AND wait_event_type = 'Lock'") == "1",
               30, what="the daemon's batch to wait for the row lock")


def answer_after_release(pg, d, blocker_sql, tx, passed, sub, token):
    """Runs blocker_sql in an open transaction of its own, sends the callback,
    waits until the daemon's batch waits for the row, commits; returns the
    daemon's answer (status, body) and what blocker_sql printed."""
    s = Session(pg)
    try:
        check_eq(s.run("BEGIN"), "", "begin")
        printed = s.run(blocker_sql)
        res = callback_in_thread(d, tx, passed, sub, token)
        wait_daemon_blocked(pg)
        check("status" not in res, "the daemon answered before the row was released")
        s.run("COMMIT")
        res["thread"].join(30)
        return (res.get("status"), res.get("body")), printed
    finally:
        s.close()


def events(pg, tx):
    return pg.rows("SELECT coalesce(previous_status, '-'), status FROM idv.transaction_events"
                   f" WHERE transaction_id = '{tx}' ORDER BY xid, id")


def case_row_lock_decides(ctx):
    """Another instance records a different result while the daemon's batch
    waits for the row: the daemon answers conflict, the first result stays.
    The sweeper expires the row meanwhile: the daemon's second pass records
    the callback (accepted, expired -> passed). A recorded result cannot be
    changed, not even by the owner; the view of first results refuses
    writes."""
    pg = ctx.pg()
    # A long deadline: the batch waits on a lock while the test looks.
    d = ctx.daemon(pg, db_timeout_ms=20000)
    tokens = {}
    for tx in ("race1", "race2"):
        tokens[tx] = f"tok-{tx}-0123456789abcdef"
        check_eq(d.register(tx, f"b{tx}", tokens[tx])[0], 201, f"register {tx}")
    tok_hex = pg.psql(f"SELECT encode(sha256(convert_to('{tokens['race1']}', 'UTF8')), 'hex')")

    # 1. Another instance ("other") records N/205 first, in a transaction
    # that is still open when the daemon's batch reaches the row.
    answer, printed = answer_after_release(
        pg, d, "SELECT idv.record_callback_batch(ARRAY['race1'], ARRAY['" + tok_hex +
        "'], ARRAY['N'], ARRAY['205'], ARRAY['10.0.0.9'], 'other', true)",
        "race1", "Y", "200", tokens["race1"])
    check_eq(printed, "A", "the other instance's callback")
    check_eq(answer, (409, {"result": "conflict"}),
             "the daemon's answer once the other result committed")
    check_eq(pg.psql("SELECT status, passed, sub_code, callback_passed, callback_sub_code"
                     " FROM idv.transactions WHERE transaction_id = 'race1'"),
             "not_passed|N|205|N|205", "race1 keeps the first result")
    check_eq(pg.rows("SELECT outcome, passed, sub_code, instance FROM idv.callback_events"
                     " WHERE transaction_id = 'race1' ORDER BY id"),
             [["accepted", "N", "205", "other"], ["conflict", "Y", "200", "idv"]],
             "audit rows of race1")
    check_eq(events(pg, "race1"), [["-", "initiated"], ["initiated", "not_passed"]],
             "status events of race1: one per change")

    # 2. The sweeper (here: an operator's UPDATE, the same row change) expires
    # race2 while the daemon's batch waits: the version the batch read is gone;
    # its second pass records the result on the expired row.
    answer, _ = answer_after_release(
        pg, d, "UPDATE idv.transactions SET status = 'expired' WHERE transaction_id = 'race2'",
        "race2", "Y", "200", tokens["race2"])
    check_eq(answer, (200, {"result": "accepted"}), "the daemon's answer once the expiry committed")
    check_eq(pg.psql("SELECT status, passed, sub_code, callback_passed FROM idv.transactions"
                     " WHERE transaction_id = 'race2'"), "passed|Y|200|Y", "race2 recorded")
    check_eq(events(pg, "race2"),
             [["-", "initiated"], ["initiated", "expired"], ["expired", "passed"]],
             "status events of race2: the trigger's and the batch's")
    check_eq(pg.rows("SELECT outcome FROM idv.callback_events WHERE transaction_id = 'race2'"),
             [["accepted"]], "one audit row for race2")

    # 3. A recorded result is never changed, whoever asks; the view of first
    # results refuses writes.
    for sql in ("UPDATE idv.transactions SET callback_passed = 'Y' WHERE transaction_id = 'race1'",
                "UPDATE idv.transactions SET callback_sub_code = '200'"
                " WHERE transaction_id = 'race1'"):
        r = pg.try_psql(sql)
        check(r.returncode != 0 and "never changed" in r.stderr, f"{sql}: {r.stderr.strip()}")
    for sql in ("UPDATE idv.callback_results SET passed = 'Y'",
                "INSERT INTO idv.callback_results VALUES ('race3', 'Y', '200', now(), 'x')",
                "DELETE FROM idv.callback_results"):
        r = pg.try_psql(sql)
        check(r.returncode != 0 and "append-only" in r.stderr, f"{sql}: {r.stderr.strip()}")
    check_eq(pg.rows("SELECT transaction_id, passed, sub_code, instance FROM idv.callback_results"
                     " ORDER BY 1"),
             [["race1", "N", "205", "other"], ["race2", "Y", "200", "idv"]],
             "first results, as the view shows them")
    d.stop_clean()


if __name__ == "__main__":
    sys.exit(idvtest.main(globals()))
