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

-- An accepted callback, with credentials, queues its confirmation in the same
-- transaction. The callback result is also kept on the row, for disagreements.
CREATE OR REPLACE FUNCTION idv.record_callbacks(p_tx text[], p_token_hex text[],
                                                p_passed text[], p_sub text[], p_ip text[],
                                                p_instance text, p_final boolean)
RETURNS TABLE (ord integer, outcome text)
LANGUAGE plpgsql AS $$
DECLARE
    r      record;
    v_t    record;
    v_prev record;
    v_n    integer;
    v_res  record;
BEGIN
    FOR r IN
        SELECT u.tx, decode(u.dg, 'hex') AS dg, u.pa, u.sc, nullif(u.ip, '')::inet AS ip,
               u.n::integer AS n
        FROM unnest(p_tx, p_token_hex, p_passed, p_sub, p_ip)
             WITH ORDINALITY AS u (tx, dg, pa, sc, ip, n)
        ORDER BY u.tx, u.n
    LOOP
        SELECT t.id, t.transaction_id, t.merchant_biz_id INTO v_t
        FROM idv.transactions t WHERE t.callback_token_sha256 = r.dg;
        IF NOT FOUND OR v_t.transaction_id IS DISTINCT FROM r.tx THEN
            outcome := 'rejected';
        ELSE
            INSERT INTO idv.callback_results (transaction_id, passed, sub_code, instance)
            VALUES (r.tx, r.pa, r.sc, p_instance)
            ON CONFLICT (transaction_id) DO NOTHING;
            GET DIAGNOSTICS v_n = ROW_COUNT;
            IF v_n = 1 THEN
                outcome := 'accepted';
                -- The status moves only from initiated or expired: a result
                -- confirmed already (by the sweeper) is never overwritten.
                IF p_final THEN
                    SELECT * INTO v_res FROM idv.result_status(r.pa, r.sc);
                    UPDATE idv.transactions
                    SET status = v_res.status, review_required = v_res.review_required,
                        passed = r.pa, sub_code = r.sc, confirmed = false,
                        callback_passed = r.pa, callback_sub_code = r.sc,
                        completed_at = coalesce(completed_at, now()), updated_at = now()
                    WHERE id = v_t.id AND status IN ('initiated', 'expired');
                ELSE
                    UPDATE idv.transactions
                    SET status = 'callback_received', passed = r.pa, sub_code = r.sc,
                        callback_passed = r.pa, callback_sub_code = r.sc,
                        completed_at = coalesce(completed_at, now()), updated_at = now()
                    WHERE id = v_t.id AND status IN ('initiated', 'expired');
                    GET DIAGNOSTICS v_n = ROW_COUNT;
                    IF v_n = 1 THEN
                        -- An open sweep item of this transaction does the same
                        -- CheckResult: it becomes the confirmation.
                        INSERT INTO idv.work_queue (kind, tx, transaction_id, merchant_biz_id)
                        VALUES ('confirm', v_t.id, v_t.transaction_id, v_t.merchant_biz_id)
                        ON CONFLICT (tx) WHERE done_at IS NULL DO NOTHING;
                    END IF;
                END IF;
                UPDATE idv.transactions SET callback_passed = r.pa, callback_sub_code = r.sc
                WHERE id = v_t.id AND callback_passed IS NULL;
            ELSE
                SELECT c.passed, c.sub_code INTO v_prev
                FROM idv.callback_results c WHERE c.transaction_id = r.tx;
                outcome := CASE WHEN v_prev.passed = r.pa AND v_prev.sub_code = r.sc
                                THEN 'duplicate' ELSE 'conflict' END;
            END IF;
        END IF;
        INSERT INTO idv.callback_events (outcome, transaction_id, passed, sub_code, client_ip,
                                         instance)
        VALUES (outcome, r.tx, r.pa, r.sc, r.ip, p_instance);
        ord := r.n;
        RETURN NEXT;
    END LOOP;
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
        WHERE t.status = 'initiated' AND t.expires_at + p_grace < now()
          AND NOT EXISTS (SELECT 1 FROM idv.work_queue q WHERE q.tx = t.id)
        ON CONFLICT (tx) WHERE done_at IS NULL DO NOTHING;
    ELSE
        UPDATE idv.transactions
        SET status = 'expired', updated_at = now()
        WHERE status = 'initiated' AND expires_at + p_grace < now();
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
