#!/usr/bin/env python3
"""The shipped prometheus.yml and idv-callbackd.rules.yml, and the /metrics
page they read.

  config_check           `promtool check config` on a byte-for-byte copy of
                         prometheus.yml, with the rules file and a token file
                         beside it where it names them;
  rules_cover_every_alert every alert of the rules file has a promtool case
                         that fires it and one that does not, and a runbook
                         section in the README;
  check_metrics          `promtool check metrics` on a live /metrics page
                         holding every family (TLS on, the fake Alibaba with a
                         throttled call, the queue figures), and the
                         certificate expiry metric following a SIGHUP reload;
  scrape                 a real Prometheus on a copy of prometheus.yml (only
                         targets and intervals replaced) scraping two
                         instances and the HAProxy of haproxy.cfg in front
                         of them: every target up, idv_callbacks_total up by
                         exactly what the test sent, every rule evaluated
                         without error and none pending on a healthy pair,
                         then IdvInstanceNotReady pending for an instance
                         that was stopped.
"""
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, HERE)
import idvtest  # noqa: E402
import opskit  # noqa: E402
from idvtest import check, check_eq, wait_until  # noqa: E402

README = os.path.normpath(os.path.join(HERE, "..", "..", "README.md"))


def case_config_check(ctx):
    """promtool check config on the shipped file as it is."""
    d = ctx.tmp.sub("etc-prometheus")
    shutil.copy(opskit.PROMETHEUS_YML, d)
    shutil.copy(opskit.RULES, d)
    with open(os.path.join(d, "idv-callbackd.token"), "w") as f:
        f.write(idvtest.ADMIN_TOKEN + "\n")
    r = subprocess.run([opskit.PROMTOOL, "check", "config", os.path.join(d, "prometheus.yml")],
                       capture_output=True, text=True)
    print(r.stdout + r.stderr)
    check_eq(r.returncode, 0, "promtool check config exit status")
    check("SUCCESS: 1 rule files found" in r.stdout, "the rules file was read")


def case_rules_cover_every_alert(ctx):
    """Each alert: a test case that fires it (exp_alerts with an entry) and
    one that does not (exp_alerts: []) in the promtool test file, and a README
    heading whose anchor its runbook annotation names."""
    with open(opskit.RULES) as f:
        rules = f.read()
    with open(opskit.RULES_TEST) as f:
        tests = f.read()
    with open(README) as f:
        readme = f.read()
    alerts = re.findall(r"^      - alert: (\w+)$", rules, re.M)
    check(len(alerts) >= 10, f"alerts found: {alerts}")
    evals = re.findall(r"alertname: (\w+)\n\s+exp_alerts:( \[\])?", tests)
    fires = {a for a, empty in evals if not empty}
    quiet = {a for a, empty in evals if empty}
    headings = {h.lower() for h in re.findall(r"^#### (\w+)$", readme, re.M)}
    for a in alerts:
        check(a in fires, f"{a}: no promtool case fires it")
        check(a in quiet, f"{a}: no promtool case where it stays quiet")
        check(f'runbook: "README.md#{a.lower()}"' in rules, f"{a}: runbook annotation")
        check(a.lower() in headings, f"{a}: no README section '#### {a}'")
    check_eq(sorted(set(a for a, _ in evals) - set(alerts)), [], "tests of unknown alerts")
    print(f"{len(alerts)} alerts, each fired and kept quiet by promtool cases, each with a"
          f" runbook: {', '.join(alerts)}")


def promtool_check_metrics(text):
    r = subprocess.run([opskit.PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                       text=True)
    return r.returncode, (r.stdout + r.stderr).strip()


def not_after(pem):
    """notAfter of a PEM certificate as Unix time (openssl x509 -enddate)."""
    out = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", pem],
                         capture_output=True, text=True, check=True).stdout.strip()
    when = out.split("=", 1)[1]  # e.g. "Jan  2 03:04:05 2030 GMT"
    return time.mktime(time.strptime(when, "%b %d %H:%M:%S %Y GMT")) - time.mktime(
        time.gmtime(0))


def case_check_metrics(ctx):
    """A page with every family (TLS on; Initialize once throttled, once
    done; the confirmation queue known) passes promtool check metrics; the
    certificate expiry is the certificate's notAfter and follows a SIGHUP
    reload of another certificate."""
    from test_initialize import alibaba, body, init  # the fake Alibaba set-up
    tls = ctx.tmp.sub("tls")
    cert, key = os.path.join(tls, "a.pem"), os.path.join(tls, "a.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=idv.test", "-days", "40",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    s = alibaba(ctx, tls_cert_file=cert, tls_key_file=key, confirm_poll_ms=100)
    s.fake.queue("Initialize", "error", count=1, status=403, code="Throttling.Api")
    st, b, _ = init(s.d, body(biz="metrics1"))
    check_eq(st, 429, f"throttled Initialize: {b}")
    st, b, _ = init(s.d, body(biz="metrics2"))
    check_eq(st, 201, f"Initialize: {b}")
    def page_with_queue():
        t = s.d.metrics()
        return t if "\nidv_work_queue_depth " in t else None

    text = wait_until(page_with_queue, 30, 0.1, "the queue figures on /metrics")
    v = idvtest.metric_value
    check_eq(v(text, "idv_outbound_throttled_total", action="Initialize"), 1.0, "throttled")
    check_eq(v(text, "idv_outbound_requests_total", action="Initialize", status="403"), 1.0,
             "403 answers")
    check_eq(v(text, "idv_outbound_requests_total", action="Initialize", status="200"), 1.0,
             "200 answers")
    check_eq(v(text, "idv_ready"), 1.0, "idv_ready")
    check_eq(v(text, "idv_db_pool_size"), 4.0, "idv_db_pool_size")
    check(v(text, "idv_work_queue_given_up") == 0.0, "idv_work_queue_given_up")
    expiry = v(text, "idv_tls_certificate_expiry_timestamp_seconds")
    check_eq(expiry, not_after(cert), "expiry metric = notAfter of the certificate")
    families = re.findall(r"^# TYPE (\S+) ", text, re.M)
    rc, out = promtool_check_metrics(text)
    print(f"promtool check metrics on a live page ({len(families)} families,"
          f" {sum(1 for ln in text.splitlines() if not ln.startswith('#'))} samples):"
          f" exit {rc} {out!r}", flush=True)
    check_eq((rc, out), (0, ""), "promtool check metrics")

    # A renewed certificate: SIGHUP, and the metric names its notAfter.
    cert2, key2 = os.path.join(tls, "b.pem"), os.path.join(tls, "b.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=idv.test", "-days", "400",
                    "-keyout", key2, "-out", cert2], check=True, capture_output=True)
    s.d.cfg.update(tls_cert_file=cert2, tls_key_file=key2)
    s.d.write_config()
    s.d.proc.send_signal(signal.SIGHUP)
    want = not_after(cert2)
    wait_until(lambda: v(s.d.metrics(), "idv_tls_certificate_expiry_timestamp_seconds") == want,
               30, 0.1, "the expiry of the new certificate")
    print(f"expiry metric {expiry:.0f} -> {want:.0f} after SIGHUP with a new certificate")
    s.d.stop_clean()


def case_scrape(ctx):
    """Prometheus on the shipped configuration scrapes two instances and
    HAProxy; counts and rules are checked through its HTTP API."""
    pg = ctx.pg()
    txs = idvtest.register_bulk(pg, 60, prefix="pm", salt="SeCrEt-prometheus")
    cfg = dict(proxy_protocol="on", trusted_proxies="127.0.0.1/32")
    a, b = (ctx.daemon(pg, name=f"idv{i}", **cfg) for i in (1, 2))
    hap = opskit.HAProxy(ctx.tmp, [a, b])
    ctx.cleanups.insert(0, hap.stop)
    hap.start()
    targets = [f"127.0.0.1:{d.admin_port}" for d in (a, b)]
    prom = opskit.Prometheus(ctx.tmp, targets, f"127.0.0.1:{hap.metrics_port}",
                             idvtest.ADMIN_TOKEN)
    ctx.cleanups.insert(0, prom.stop)
    prom.start()
    want_targets = {("idv-callbackd", t): "up" for t in targets}
    want_targets[("haproxy", f"127.0.0.1:{hap.metrics_port}")] = "up"
    wait_until(lambda: prom.targets() == want_targets, 60, 0.2, "every target up")
    hap.wait_status("idv1", "UP")
    hap.wait_status("idv2", "UP")

    by_outcome = 'sum by (outcome) (idv_callbacks_total{job="idv-callbackd"})'

    def scraped():
        return {dict(k)["outcome"]: v for k, v in prom.query(by_outcome).items()}

    def direct():
        c = collections.Counter()
        for d in (a, b):
            text = d.metrics()
            for o in ("ok", "accepted", "duplicate", "conflict", "rejected", "malformed",
                      "unavailable"):
                c[o] += idvtest.metric_value(text, "idv_callbacks_total", outcome=o)
        return dict(c)

    def settled(want=None):
        s = scraped()
        return s if s and s == (want or direct()) else None

    base = wait_until(settled, 60, 0.2, "Prometheus to have the daemons' figures")
    sent = collections.Counter()
    for i, (tx, tok) in enumerate(txs):
        for outcome, t, p in (("accepted", tok, "Y"), ("duplicate", tok, "Y")):
            if outcome == "duplicate" and i % 4:
                continue
            path = f"/idv/callback?transactionId={tx}&passed={p}&subCode=200&callbackToken={t}"
            st, res = get(hap.port, path)
            check_eq((st, res), (200, outcome), f"{outcome} through HAProxy")
            sent[outcome] += 1
        if i % 10 == 0:
            st, res = get(hap.port, f"/idv/callback?transactionId={tx}&passed=Y&subCode=200"
                                    f"&callbackToken=SeCrEt-wrong-token-{i}")
            check_eq((st, res), (403, "rejected"), "rejected through HAProxy")
            sent["rejected"] += 1
    want = {o: base.get(o, 0.0) + sent.get(o, 0) for o in base}
    got = wait_until(lambda: settled(want), 60, 0.2, f"Prometheus to count {dict(sent)} more")
    print(f"sent through HAProxy {dict(sent)}; Prometheus: sum by (outcome)"
          f" (idv_callbacks_total) {base} -> {got}", flush=True)
    # HAProxy is scraped on its own schedule: wait for its figure too.
    total = float(sum(sent.values()))
    hreq = 'sum(haproxy_frontend_http_requests_total{proxy="idv_public"})'
    wait_until(lambda: list(prom.query(hreq).values()) == [total], 60, 0.2,
               f"HAProxy's frontend requests ({total:.0f}) as Prometheus scraped them")

    # The rules: loaded, evaluated on real series without error, quiet.
    rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    check_eq(sorted((r["name"], r["health"], r.get("lastError", "")) for r in rules),
             sorted((r["name"], "ok", "") for r in rules), "every rule evaluated without error")
    check(len(rules) >= 10, f"rules loaded: {len(rules)}")
    # A scrape that misses its deadline on a loaded machine makes an alert
    # pending until the next one; none may stay.
    if prom.alerts():
        print(f"alerts pending on a healthy pair (waiting for them to clear): {prom.alerts()}",
              flush=True)
    wait_until(lambda: prom.alerts() == [], 60, 0.2, "no alert pending or firing")

    # One instance stopped: its alert is pending (it fires after 3 minutes).
    b.stop_clean()
    wait_until(lambda: [x for x in prom.alerts() if x[0] == "IdvInstanceNotReady"], 60, 0.2,
               "IdvInstanceNotReady")
    pending = prom.alerts()
    check_eq([(n, st, lb.get("instance")) for n, st, lb in pending],
             [("IdvInstanceNotReady", "pending", targets[1])], "alerts after stopping idv2")
    print(f"{len(rules)} rules evaluated without error; none pending while both instances ran;"
          f" after stopping idv2: {[(n, st, lb.get('instance')) for n, st, lb in pending]}")
    prom.stop()
    hap.stop()
    a.stop_clean()


def get(port, path):
    """One GET through HAProxy on a fresh connection: (status, result)."""
    import http.client
    import json
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", path, headers={"Host": "idv.test"})
        r = c.getresponse()
        return r.status, json.loads(r.read()).get("result")
    finally:
        c.close()


if __name__ == "__main__":
    sys.exit(idvtest.main(globals()))
