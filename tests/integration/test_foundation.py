#!/usr/bin/env python3
"""Foundation: the callback receiver end to end, against a real PostgreSQL."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
import idvtest  # noqa: E402
from idvtest import check, check_eq  # noqa: E402

TOKEN = "tok-AAAAAAAAAAAAAAAAAAAA"


def case_probe_ok(ctx):
    """A bare GET (Alibaba's reachability probe) answers 200 ok without a row."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    st, body, _, _ = d.callback()
    check_eq(st, 200, "status")
    check_eq(body, {"result": "ok"}, "body")
    check_eq(pg.psql("SELECT count(*) FROM idv.callback_events"), "0", "audit rows")


def case_accepted_duplicate_conflict(ctx):
    """First result accepted and committed; same again duplicate; different conflict,
    and the first result stays."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    check_eq(d.register("tx1", "biz1", TOKEN)[0], 201, "register")
    st, body, _, _ = d.callback("tx1", "Y", "200", TOKEN)
    check_eq((st, body), (200, {"result": "accepted"}), "first callback")
    check_eq(pg.psql("SELECT status, passed, sub_code, confirmed FROM idv.transaction_status"
                     " WHERE transaction_id = 'tx1'"), "passed|Y|200|f", "status row")
    st, body, _, _ = d.callback("tx1", "Y", "200", TOKEN)
    check_eq((st, body), (200, {"result": "duplicate"}), "same again")
    st, body, _, _ = d.callback("tx1", "N", "205", TOKEN)
    check_eq((st, body), (409, {"result": "conflict"}), "different result")
    check_eq(pg.psql("SELECT passed, sub_code FROM idv.callback_results"), "Y|200", "first result kept")
    check_eq(pg.psql("SELECT string_agg(outcome, ',' ORDER BY id) FROM idv.callback_events"),
             "accepted,duplicate,conflict", "audit rows")


if __name__ == "__main__":
    sys.exit(idvtest.main(globals()))
