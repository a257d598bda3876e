-- idv-callbackd: confirmation with CheckResult, a durable work queue shared by
-- every instance, the sweeper, and SubCode meanings as data.

-- What each SubCode means. Seeded from Alibaba's documentation; an unknown code
-- means review, never a pass. Operators may add rows.
CREATE TABLE idv.sub_codes (
    sub_code text PRIMARY KEY,
    verdict  text NOT NULL CHECK (verdict IN ('pass', 'fail', 'review')),
    meaning  text NOT NULL
);
INSERT INTO idv.sub_codes (sub_code, verdict, meaning) VALUES
    ('200', 'pass', 'passed'),
    ('201', 'fail', 'name and ID number do not match'),
    ('202', 'fail', 'no identity record'),
    ('203', 'fail', 'no usable photo'),
    ('204', 'fail', 'face does not match'),
    ('205', 'fail', 'liveness attack suspected'),
    ('206', 'fail', 'business-policy restriction'),
    ('207', 'fail', 'face does not match the document'),
    ('209', 'review', 'authoritative source abnormal');

-- The status a result leads to: passed only with Passed=Y and a SubCode whose
-- verdict is pass. Anything else is not_passed; review_required tells a
-- Passed=Y whose code is unknown or not a pass apart from a plain failure.
CREATE FUNCTION idv.result_status(p_passed text, p_sub_code text,
                                  OUT status text, OUT review_required boolean)
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_passed = 'Y' AND v.verdict = 'pass' THEN 'passed' ELSE 'not_passed' END,
           coalesce(v.verdict, 'review') = 'review' OR (p_passed = 'Y' AND v.verdict = 'fail')
    FROM (SELECT 1) one LEFT JOIN idv.sub_codes v ON v.sub_code = p_sub_code;
$$;

ALTER TABLE idv.transactions
    ADD COLUMN review_required boolean NOT NULL DEFAULT false,
    ADD COLUMN confirmed_at    timestamptz,
    ADD COLUMN callback_passed   text,
    ADD COLUMN callback_sub_code text,
    ADD COLUMN disagreement    boolean NOT NULL DEFAULT false;

-- Every CheckResult answer kept (append-only): Ext* fields as jsonb.
CREATE TABLE idv.check_results (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx               bigint NOT NULL REFERENCES idv.transactions (id),
    transaction_id   text NOT NULL,
    checked_at       timestamptz NOT NULL DEFAULT now(),
    request_id       text,
    passed           text,
    sub_code         text,
    ext_basic_info   jsonb,
    ext_face_info    jsonb,
    ext_id_info      jsonb,
    ext_info         jsonb,
    ext_risk_info    jsonb,
    ext_source_info  jsonb,
    ekyc_result      jsonb,
    instance         text NOT NULL
);
CREATE INDEX check_results_tx ON idv.check_results (tx);
CREATE TRIGGER check_results_append_only BEFORE UPDATE OR DELETE ON idv.check_results
    FOR EACH ROW EXECUTE FUNCTION idv.forbid_change();

-- The durable work queue. An item is claimed with a lease (FOR UPDATE SKIP
-- LOCKED, then committed at once, so no transaction stays open across the call
-- to Alibaba); a lease that runs out (the instance died) makes it claimable
-- again. Completion requires the lease token, so an item is completed once.
CREATE TABLE idv.work_queue (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind           text NOT NULL CHECK (kind IN ('confirm', 'sweep')),
    tx             bigint NOT NULL REFERENCES idv.transactions (id),
    transaction_id text NOT NULL,
    merchant_biz_id text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    not_before     timestamptz NOT NULL DEFAULT now(),
    attempts       integer NOT NULL DEFAULT 0,
    lease          uuid,
    leased_by      text,
    leased_until   timestamptz,
    last_error     text,
    done_at        timestamptz,
    done_by        text,
    outcome        text,
    gave_up        boolean NOT NULL DEFAULT false
);
-- One open item per transaction.
CREATE UNIQUE INDEX work_queue_open_tx ON idv.work_queue (tx) WHERE done_at IS NULL;
CREATE INDEX work_queue_ready ON idv.work_queue (not_before)
    WHERE done_at IS NULL AND NOT gave_up;

-- Records a batch of valid callbacks in one transaction (group commit). An
-- accepted callback makes the status final (p_final: no CheckResult follows)
-- or callback_received, and then, with credentials, queues its confirmation in
-- the same transaction; the callback's result is also kept on the row, for
-- disagreements.
--
-- Set-based: two statements per batch (three when a status did not move),
-- whatever its size, instead of several per callback. Each statement's fixed
-- cost (executor start-up, the table's CHECK constraints prepared again, the
-- planning of result_status) was most of the work of a callback (see README,
-- Performance). The outcome
-- of every element is what handling them one by one in (transaction_id,
-- ordinal) order gives:
--  * rejected: no transaction has this token, or it belongs to another id;
--  * accepted: the first valid element of a transaction, when its row went
--    into idv.callback_results (the primary key decides, across instances);
--  * duplicate / conflict: any other valid element, compared with the result
--    recorded (by this batch, or committed by another transaction before).
-- Locks are taken in transaction_id order (the callback_results inserts), and
-- the transactions rows updated are those whose result this batch inserted,
-- so concurrent batches cannot deadlock on each other.
CREATE OR REPLACE FUNCTION idv.record_callbacks(p_tx text[], p_token_hex text[],
                                                p_passed text[], p_sub text[], p_ip text[],
                                                p_instance text, p_final boolean)
RETURNS TABLE (ord integer, outcome text)
LANGUAGE plpgsql
-- Custom plans would be made for every call (a small array looks cheaper than
-- the generic estimate), and planning cost more than running: the generic
-- plans (index lookups per element) suit every batch size up to 256.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_valid  boolean[];  -- by ordinal: the token belongs to the transaction named
    v_new_tx text[];     -- results this batch recorded
    v_new_pa text[];
    v_new_sc text[];
    v_n      integer;    -- transactions whose status moved
BEGIN
    -- One statement: which elements are valid; the first valid element of
    -- each transaction tries to record its result; the transactions whose
    -- result was recorded move on. The status moves only from initiated or
    -- expired: a result confirmed already (by the sweeper) is never
    -- overwritten. With p_final, status and review_required are what
    -- idv.result_status() gives, written out here (a SQL function in a query
    -- is planned again on every call, which cost as much as the rest of an
    -- element); without, the status becomes callback_received and the
    -- confirmation is queued (an open sweep item of the transaction does the
    -- same CheckResult: it becomes the confirmation).
    WITH u AS (
        SELECT x.tx, x.pa, x.sc, x.n, t.transaction_id IS NOT NULL AS valid
        FROM unnest(p_tx, p_token_hex, p_passed, p_sub) WITH ORDINALITY AS x (tx, dg, pa, sc, n)
        LEFT JOIN idv.transactions t
               ON t.callback_token_sha256 = decode(x.dg, 'hex') AND t.transaction_id = x.tx),
    ins AS (
        INSERT INTO idv.callback_results (transaction_id, passed, sub_code, instance)
        SELECT DISTINCT ON (u.tx) u.tx, u.pa, u.sc, p_instance
        FROM u WHERE u.valid
        ORDER BY u.tx, u.n
        ON CONFLICT (transaction_id) DO NOTHING
        RETURNING transaction_id, passed, sub_code),
    upd AS (
        UPDATE idv.transactions t
        SET status = CASE WHEN NOT p_final THEN 'callback_received'
                          WHEN ins.passed = 'Y' AND v.verdict = 'pass' THEN 'passed'
                          ELSE 'not_passed' END,
            review_required = CASE WHEN p_final
                                   THEN coalesce(v.verdict, 'review') = 'review'
                                        OR (ins.passed = 'Y' AND v.verdict = 'fail')
                                   ELSE t.review_required END,
            confirmed = CASE WHEN p_final THEN false ELSE t.confirmed END,
            passed = ins.passed, sub_code = ins.sub_code,
            callback_passed = ins.passed, callback_sub_code = ins.sub_code,
            completed_at = coalesce(t.completed_at, now()), updated_at = now()
        FROM ins LEFT JOIN idv.sub_codes v ON v.sub_code = ins.sub_code
        WHERE t.transaction_id = ins.transaction_id AND t.status IN ('initiated', 'expired')
        RETURNING t.id, t.transaction_id, t.merchant_biz_id),
    wq AS (
        INSERT INTO idv.work_queue (kind, tx, transaction_id, merchant_biz_id)
        SELECT 'confirm', upd.id, upd.transaction_id, upd.merchant_biz_id
        FROM upd WHERE NOT p_final
        ORDER BY upd.transaction_id
        ON CONFLICT (tx) WHERE done_at IS NULL DO NOTHING)
    SELECT a.valid, i.tx, i.pa, i.sc, (SELECT count(*)::integer FROM upd)
    INTO v_valid, v_new_tx, v_new_pa, v_new_sc, v_n
    FROM (SELECT array_agg(u.valid ORDER BY u.n) AS valid FROM u) a,
         (SELECT array_agg(ins.transaction_id) AS tx, array_agg(ins.passed) AS pa,
                 array_agg(ins.sub_code) AS sc FROM ins) i;

    -- Rows whose status did not move still keep the callback's result.
    IF v_n < coalesce(cardinality(v_new_tx), 0) THEN
        UPDATE idv.transactions t
        SET callback_passed = a.pa, callback_sub_code = a.sc
        FROM unnest(v_new_tx, v_new_pa, v_new_sc) AS a (tx, pa, sc)
        WHERE t.transaction_id = a.tx AND t.callback_passed IS NULL;
    END IF;

    -- Outcomes, and one audit row per element in (transaction_id, ordinal)
    -- order. This statement sees the results recorded above and those other
    -- transactions committed meanwhile (the ones an insert above yielded to).
    RETURN QUERY
    WITH u AS (
        SELECT x.tx, x.pa, x.sc, nullif(x.ip, '')::inet AS ip, x.n::integer AS n,
               v_valid[x.n] AS valid,
               min(x.n) FILTER (WHERE v_valid[x.n]) OVER (PARTITION BY x.tx) AS first_n
        FROM unnest(p_tx, p_passed, p_sub, p_ip) WITH ORDINALITY AS x (tx, pa, sc, ip, n)),
    o AS (
        SELECT u.*, CASE
                   WHEN NOT u.valid THEN 'rejected'
                   WHEN u.n = u.first_n AND u.tx = ANY (v_new_tx) THEN 'accepted'
                   WHEN c.passed = u.pa AND c.sub_code = u.sc THEN 'duplicate'
                   ELSE 'conflict' END AS outcome
        FROM u LEFT JOIN idv.callback_results c ON u.valid AND c.transaction_id = u.tx),
    ev AS (
        INSERT INTO idv.callback_events (outcome, transaction_id, passed, sub_code, client_ip,
                                         instance)
        SELECT o.outcome, o.tx, o.pa, o.sc, o.ip, p_instance FROM o ORDER BY o.tx, o.n)
    SELECT o.n, o.outcome FROM o;
END
$$;

-- Claims up to p_limit ready items for p_instance, for p_lease.
CREATE FUNCTION idv.claim_work(p_instance text, p_limit integer, p_lease interval)
RETURNS TABLE (id bigint, kind text, transaction_id text, merchant_biz_id text,
               lease uuid, attempts integer)
LANGUAGE sql AS $$
    UPDATE idv.work_queue w
    SET lease = gen_random_uuid(), leased_by = p_instance, leased_until = now() + p_lease,
        attempts = w.attempts + 1
    FROM (SELECT q.id FROM idv.work_queue q
          WHERE q.done_at IS NULL AND NOT q.gave_up AND q.not_before <= now()
            AND (q.leased_until IS NULL OR q.leased_until < now())
          ORDER BY q.not_before, q.id
          LIMIT p_limit
          FOR UPDATE SKIP LOCKED) c
    WHERE w.id = c.id
    RETURNING w.id, w.kind, w.transaction_id, w.merchant_biz_id, w.lease, w.attempts;
$$;

-- Records a CheckResult that has a verdict (Passed Y or N). CheckResult wins
-- over the callback; a disagreement is kept on the row. Returns 'confirmed',
-- 'disagreement', or 'stale' (the lease was lost: someone else owns the item).
CREATE FUNCTION idv.complete_confirmation(p_id bigint, p_lease uuid, p_instance text,
                                          p_request_id text, p_passed text, p_sub_code text,
                                          p_ext jsonb)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    w     record;
    t     record;
    v_res record;
    v_dis boolean;
BEGIN
    UPDATE idv.work_queue q
    SET done_at = now(), done_by = p_instance, outcome = 'confirmed', leased_until = NULL
    WHERE q.id = p_id AND q.lease = p_lease AND q.done_at IS NULL
    RETURNING q.* INTO w;
    IF NOT FOUND THEN
        RETURN 'stale';
    END IF;
    SELECT * INTO t FROM idv.transactions WHERE id = w.tx FOR UPDATE;
    INSERT INTO idv.check_results (tx, transaction_id, request_id, passed, sub_code,
        ext_basic_info, ext_face_info, ext_id_info, ext_info, ext_risk_info, ext_source_info,
        ekyc_result, instance)
    VALUES (w.tx, w.transaction_id, nullif(p_request_id, ''), p_passed, p_sub_code,
        p_ext -> 'ExtBasicInfo', p_ext -> 'ExtFaceInfo', p_ext -> 'ExtIdInfo',
        p_ext -> 'ExtInfo', p_ext -> 'ExtRiskInfo', p_ext -> 'ExtSourceInfo',
        p_ext -> 'EkycResult', p_instance);
    v_dis := t.callback_passed IS NOT NULL
             AND (t.callback_passed, t.callback_sub_code) IS DISTINCT FROM (p_passed, p_sub_code);
    SELECT * INTO v_res FROM idv.result_status(p_passed, p_sub_code);
    UPDATE idv.transactions
    SET status = v_res.status, review_required = v_res.review_required, passed = p_passed,
        sub_code = p_sub_code, confirmed = true, confirmed_at = now(),
        completed_at = coalesce(completed_at, now()), disagreement = v_dis, updated_at = now()
    WHERE id = w.tx;
    IF v_dis THEN
        UPDATE idv.work_queue SET outcome = 'disagreement' WHERE id = p_id;
        RETURN 'disagreement';
    END IF;
    RETURN 'confirmed';
END
$$;

-- CheckResult says the verification never completed: a sweep item marks the
-- transaction expired ('expired'); otherwise 'retry' (the daemon then backs off).
CREATE FUNCTION idv.complete_unfinished(p_id bigint, p_lease uuid, p_instance text,
                                        p_request_id text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    w record;
BEGIN
    SELECT q.* INTO w FROM idv.work_queue q
    WHERE q.id = p_id AND q.lease = p_lease AND q.done_at IS NULL FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'stale';
    END IF;
    -- Only a transaction that still waits for its callback expires; one whose
    -- callback came meanwhile (or a confirm item) is asked again later.
    UPDATE idv.transactions SET status = 'expired', updated_at = now()
    WHERE id = w.tx AND status = 'initiated' AND w.kind = 'sweep';
    IF NOT FOUND THEN
        RETURN 'retry';
    END IF;
    UPDATE idv.work_queue
    SET done_at = now(), done_by = p_instance, outcome = 'expired', leased_until = NULL
    WHERE id = p_id;
    RETURN 'expired';
END
$$;

-- A failed attempt: back to the queue after p_delay, or given up (kept visible
-- with its last error) when p_give_up.
CREATE FUNCTION idv.retry_work(p_id bigint, p_lease uuid, p_error text, p_delay interval,
                               p_give_up boolean)
RETURNS text
LANGUAGE sql AS $$
    WITH u AS (
        UPDATE idv.work_queue q
        SET last_error = left(p_error, 1000), not_before = now() + p_delay,
            leased_until = NULL, lease = NULL, gave_up = p_give_up
        WHERE q.id = p_id AND q.lease = p_lease AND q.done_at IS NULL
        RETURNING q.gave_up)
    SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM u) THEN 'stale'
                WHEN (SELECT gave_up FROM u) THEN 'gave_up' ELSE 'retry' END;
$$;

-- The sweeper: transactions still initiated past expires_at + p_grace get a
-- sweep item (with credentials) or become expired (without: nobody can ask
-- Alibaba); rows left initializing past p_stale are marked failed. Returns the
-- number of rows it touched. Any instance may run it at any time.
CREATE FUNCTION idv.sweep(p_grace interval, p_stale interval, p_can_check boolean)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer := 0;
    k integer;
BEGIN
    UPDATE idv.transactions
    SET status = 'initialize_failed', upstream_code = 'Abandoned',
        upstream_message = 'left initializing by an interrupted call', updated_at = now()
    WHERE status = 'initializing' AND initiated_at < now() - p_stale;
    GET DIAGNOSTICS k = ROW_COUNT;
    n := n + k;
    IF p_can_check THEN
        INSERT INTO idv.work_queue (kind, tx, transaction_id, merchant_biz_id)
        SELECT 'sweep', t.id, t.transaction_id, t.merchant_biz_id
        FROM idv.transactions t
        WHERE t.status = 'initiated' AND t.expires_at < now() - p_grace
          AND NOT EXISTS (SELECT 1 FROM idv.work_queue q WHERE q.tx = t.id)
        ON CONFLICT (tx) WHERE done_at IS NULL DO NOTHING;
    ELSE
        UPDATE idv.transactions
        SET status = 'expired', updated_at = now()
        WHERE status = 'initiated' AND expires_at < now() - p_grace;
    END IF;
    GET DIAGNOSTICS k = ROW_COUNT;
    RETURN n + k;
END
$$;

CREATE VIEW idv.work_queue_status AS
SELECT count(*) FILTER (WHERE done_at IS NULL AND NOT gave_up) AS waiting,
       coalesce(extract(epoch FROM now() - min(created_at)
                FILTER (WHERE done_at IS NULL AND NOT gave_up)), 0)::float8 AS oldest_seconds,
       count(*) FILTER (WHERE gave_up AND done_at IS NULL) AS given_up
FROM idv.work_queue;

CREATE OR REPLACE VIEW idv.transaction_status AS
SELECT t.transaction_id, t.merchant_biz_id, t.status, t.passed, t.sub_code, t.initiated_at,
       t.completed_at, t.confirmed, t.expires_at, t.merchant_user_id, t.origin,
       t.upstream_code, t.upstream_message, t.review_required, t.confirmed_at,
       t.callback_passed, t.callback_sub_code, t.disagreement
FROM idv.transactions t;

-- Catch-up for consumers: events of transactions that have all finished, after
-- a position (xid, id). Events are visible in (xid, id) order without gaps:
-- anything that could still appear below the returned ones belongs to a
-- transaction that is still running, and is excluded until it ends.
CREATE FUNCTION idv.events_after(p_xid xid8, p_id bigint, p_limit integer DEFAULT 1000)
RETURNS SETOF idv.transaction_events
LANGUAGE sql STABLE AS $$
    SELECT e.* FROM idv.transaction_events e
    WHERE (e.xid, e.id) > (p_xid, p_id)
      AND e.xid < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY e.xid, e.id
    LIMIT p_limit;
$$;

REVOKE ALL ON idv.sub_codes, idv.check_results, idv.work_queue FROM PUBLIC;
REVOKE ALL ON FUNCTION idv.result_status(text, text), idv.claim_work(text, integer, interval),
    idv.complete_confirmation(bigint, uuid, text, text, text, text, jsonb),
    idv.complete_unfinished(bigint, uuid, text, text),
    idv.retry_work(bigint, uuid, text, interval, boolean),
    idv.sweep(interval, interval, boolean), idv.events_after(xid8, bigint, integer) FROM PUBLIC;
GRANT SELECT ON idv.sub_codes TO idv_daemon, idv_reader;
GRANT SELECT, INSERT ON idv.check_results TO idv_daemon;
GRANT SELECT, INSERT, UPDATE ON idv.work_queue TO idv_daemon;
GRANT SELECT ON idv.work_queue_status TO idv_daemon, idv_reader;
GRANT SELECT ON idv.check_results, idv.work_queue TO idv_reader;
GRANT EXECUTE ON FUNCTION idv.result_status(text, text), idv.claim_work(text, integer, interval),
    idv.complete_confirmation(bigint, uuid, text, text, text, text, jsonb),
    idv.complete_unfinished(bigint, uuid, text, text),
    idv.retry_work(bigint, uuid, text, interval, boolean),
    idv.sweep(interval, interval, boolean) TO idv_daemon;
GRANT EXECUTE ON FUNCTION idv.events_after(xid8, bigint, integer) TO idv_daemon, idv_reader;
