-- Half the database work per accepted callback (issue 15).
--
-- Before, an accepted callback wrote four rows (idv.callback_results,
-- idv.transactions, idv.transaction_events, idv.callback_events), eleven index
-- entries, two foreign-key checks (each a row lock, with its WAL record, on the
-- idv.transactions row), a speculative insertion (ON CONFLICT), and evaluated
-- two regular expressions that cost more than the rest. Now it writes three
-- rows and three index entries (the update of idv.transactions is a HOT
-- update: no index changes), checks no foreign key, and the update it makes
-- anyway is the lock that decides "first result wins":
--
--  * The first callback result lives on the transaction row (callback_passed,
--    callback_sub_code, which held it already): the row lock of that update
--    decides which result is first, whichever instance received it (a second
--    writer waits, then sees callback_passed set and records nothing).
--    idv.callback_results held the same fact a second time; it becomes a view,
--    writing through it is refused, and the columns are write-once (the
--    status trigger refuses any change of a recorded result, whoever asks).
--  * idv.transactions loses the two indexes whose predicates named status
--    (transactions_open, transactions_one_initializing): a change of status
--    could then never be a HOT update, and every callback added an entry to
--    each of the four other indexes. The sweeper finds its work in a due list
--    instead (idv.sweep_due, below); Initialize keeps one in-flight call per
--    merchantBizId with the per-bizId transaction lock of
--    idv.begin_initialize, which is what decided it before (the unique index
--    was a second guard behind it). Pages keep room for new row versions
--    (fillfactor), so that the update finds space on its own page.
--  * Status events are appended by the status trigger only: the trigger reads
--    the rows its statement changed, so the row an event points to exists; the
--    foreign key transaction_events.tx -> transactions, checked (and locked)
--    per event, proved nothing more. The trigger runs with its owner's rights
--    and idv_daemon loses INSERT on idv.transaction_events: an event cannot be
--    written without the status change it records. The same reasoning drops
--    the foreign keys of idv.check_results and idv.work_queue: their rows are
--    written by functions that have just read or locked the transaction row
--    (complete_confirmation, record_callback_batch, sweep).
--  * No query looks up idv.callback_events or idv.transaction_events by id:
--    readers find rows by transaction_id, by time (BRIN on received_at) or by
--    (xid, id) (the consumer protocol). Their primary-key indexes go; id stays
--    an identity column (unique by construction: GENERATED ALWAYS). Without
--    them and without foreign keys the history tables can be partitioned by
--    time (a unique index there must include the partition key).
--
-- Indexes kept, with their users (README, Performance, lists the queries):
--   transactions: pkey (id: work items, Initialize steps, confirmation, the
--     sweeper), transaction_id (callbacks, status GET, registration),
--     callback_token_sha256 (a token belongs to one transaction:
--     registration), merchant_biz_id (Initialize)
--   callback_events: transaction_id (audit queries 1 and 3), received_at BRIN
--     (audit queries 2 and 5)
--   transaction_events: (xid, id) (idv.events_after), transaction_id (audit
--     query 4)
--   sweep_due: (kind, due) (idv.sweep)

-- 1. The first callback result, on the transaction row. Results recorded
-- before 0003 have no callback_passed yet: they are copied (the status trigger
-- sees no status change, so no event is written).
UPDATE idv.transactions t
SET callback_passed = r.passed, callback_sub_code = r.sub_code
FROM idv.callback_results r
WHERE t.transaction_id = r.transaction_id AND t.callback_passed IS NULL;

DROP TABLE idv.callback_results;

-- The same facts under the old name, for auditors and scripts that read it:
-- the result from the transaction row, when and by which instance it was
-- received from its 'accepted' audit row (written in the same transaction).
CREATE VIEW idv.callback_results AS
SELECT t.transaction_id, t.callback_passed AS passed, t.callback_sub_code AS sub_code,
       e.received_at, e.instance
FROM idv.transactions t
LEFT JOIN idv.callback_events e ON e.transaction_id = t.transaction_id AND e.outcome = 'accepted'
WHERE t.callback_passed IS NOT NULL;

CREATE FUNCTION idv.forbid_result_write() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'idv.callback_results is append-only: a first result is recorded by '
                    'idv.record_callbacks and never changed'
        USING ERRCODE = 'insufficient_privilege';
END
$$;
-- A simple view is updatable by default: these triggers make it refuse, even
-- for its owner.
CREATE TRIGGER callback_results_read_only INSTEAD OF INSERT OR UPDATE OR DELETE
    ON idv.callback_results FOR EACH ROW EXECUTE FUNCTION idv.forbid_result_write();

-- 2. The sweeper's due list. A transaction enters it when it becomes
-- initializing (due: initiated_at, swept p_stale later) or initiated (due:
-- expires_at, swept p_grace later), and again whenever those times change; the
-- status trigger writes it. idv.sweep takes the rows that are due and looks at
-- the transaction as it is then. A callback never touches it: the transaction
-- has left the list's concern, and the sweeper finds it no longer initiated.
CREATE TABLE idv.sweep_due (
    kind text NOT NULL CHECK (kind IN ('initializing', 'initiated')),
    due  timestamptz NOT NULL,
    tx   bigint NOT NULL  -- idv.transactions.id
);
CREATE INDEX sweep_due_due ON idv.sweep_due (kind, due);

INSERT INTO idv.sweep_due (kind, due, tx)
SELECT t.status, CASE WHEN t.status = 'initiated' THEN t.expires_at ELSE t.initiated_at END, t.id
FROM idv.transactions t
WHERE t.status IN ('initializing', 'initiated')
  AND (t.status = 'initializing' OR t.expires_at IS NOT NULL);

DROP INDEX idv.transactions_open;
DROP INDEX idv.transactions_one_initializing;

-- A row is updated two or three times in its life (Initialize, callback,
-- confirmation); room on its page for the new version makes each a HOT update
-- (older versions are pruned once no snapshot needs them). Applies to pages
-- written from now on.
ALTER TABLE idv.transactions SET (fillfactor = 50);

-- 3. Status events and the due list: written by the trigger alone, one
-- statement per trigger call, each event with its NOTIFY. The payload comes
-- from the inserted rows themselves (RETURNING): the rows a statement changed
-- are read once. It is the text json_build_object() gave, byte for byte,
-- written out: for a row of eight fields json_build_object() looked up every
-- argument's type on every call, more than the rest of writing the event. Only
-- sub_code needs JSON escaping (CheckResult may send anything); transaction_id
-- and merchant_biz_id are restricted to [A-Za-z0-9_-] by CHECK constraints,
-- status to its names, passed to Y/N.
-- A recorded callback result never changes: an UPDATE that would change one
-- fails, whoever makes it (the first result used to be kept in an append-only
-- table).
CREATE OR REPLACE FUNCTION idv.on_status_change_set() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_n   bigint;
    v_bad boolean;
BEGIN
    IF TG_OP = 'INSERT' THEN
        WITH ev AS (
            INSERT INTO idv.transaction_events (tx, transaction_id, merchant_biz_id, status,
                                                previous_status, passed, sub_code, confirmed)
            SELECT n.id, n.transaction_id, n.merchant_biz_id, n.status, NULL, n.passed,
                   n.sub_code, n.confirmed
            FROM new_rows n ORDER BY n.id
            RETURNING *),
        due AS (
            INSERT INTO idv.sweep_due (kind, due, tx)
            SELECT n.status,
                   CASE WHEN n.status = 'initiated' THEN n.expires_at ELSE n.initiated_at END, n.id
            FROM new_rows n
            WHERE n.status = 'initializing' OR (n.status = 'initiated' AND n.expires_at IS NOT NULL))
        SELECT count(pg_notify('idv_transaction_status',
            '{"eventId" : ' || e.id
            || ', "transactionId" : ' || coalesce('"' || e.transaction_id || '"', 'null')
            || ', "merchantBizId" : "' || e.merchant_biz_id
            || '", "status" : "' || e.status
            || '", "previousStatus" : null, "passed" : ' || coalesce('"' || e.passed || '"', 'null')
            || ', "subCode" : ' || coalesce(to_json(e.sub_code)::text, 'null')
            || ', "confirmed" : ' || e.confirmed || '}'))
        INTO v_n
        FROM ev e;
        RETURN NULL;
    END IF;
    WITH c AS (
        SELECT n.id, n.transaction_id, n.merchant_biz_id, n.status, o.status AS previous_status,
               n.passed, n.sub_code, n.confirmed,
               CASE WHEN n.status = 'initiated' THEN n.expires_at ELSE n.initiated_at END AS due,
               n.status IN ('initializing', 'initiated')
               AND (n.status IS DISTINCT FROM o.status
                    OR n.expires_at IS DISTINCT FROM o.expires_at
                    OR n.initiated_at IS DISTINCT FROM o.initiated_at) AS due_changed,
               o.callback_passed IS NOT NULL
               AND (n.callback_passed, n.callback_sub_code)
                   IS DISTINCT FROM (o.callback_passed, o.callback_sub_code) AS result_changed
        FROM new_rows n JOIN old_rows o ON o.id = n.id),
    ev AS (
        INSERT INTO idv.transaction_events (tx, transaction_id, merchant_biz_id, status,
                                            previous_status, passed, sub_code, confirmed)
        SELECT c.id, c.transaction_id, c.merchant_biz_id, c.status, c.previous_status, c.passed,
               c.sub_code, c.confirmed
        FROM c WHERE c.status IS DISTINCT FROM c.previous_status
        ORDER BY c.id
        RETURNING *),
    due AS (
        INSERT INTO idv.sweep_due (kind, due, tx)
        SELECT c.status, c.due, c.id FROM c
        WHERE c.due_changed AND c.due IS NOT NULL)
    SELECT count(pg_notify('idv_transaction_status',
               '{"eventId" : ' || e.id
               || ', "transactionId" : ' || coalesce('"' || e.transaction_id || '"', 'null')
               || ', "merchantBizId" : "' || e.merchant_biz_id
               || '", "status" : "' || e.status
               || '", "previousStatus" : ' || coalesce('"' || e.previous_status || '"', 'null')
               || ', "passed" : ' || coalesce('"' || e.passed || '"', 'null')
               || ', "subCode" : ' || coalesce(to_json(e.sub_code)::text, 'null')
               || ', "confirmed" : ' || e.confirmed || '}')),
           (SELECT bool_or(c.result_changed) FROM c)
    INTO v_n, v_bad
    FROM ev e;
    IF v_bad THEN
        RAISE EXCEPTION 'a recorded callback result is never changed'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END
$$;

-- 4. Foreign keys and primary-key indexes nobody needs (see the top).
ALTER TABLE idv.transaction_events DROP CONSTRAINT transaction_events_tx_fkey;
ALTER TABLE idv.check_results DROP CONSTRAINT check_results_tx_fkey;
ALTER TABLE idv.work_queue DROP CONSTRAINT work_queue_tx_fkey;
ALTER TABLE idv.transaction_events DROP CONSTRAINT transaction_events_pkey;
ALTER TABLE idv.callback_events DROP CONSTRAINT callback_events_pkey;

-- 5. CHECK constraints are evaluated on every UPDATE of a row, whichever
-- columns it changes. A bounded repetition ({1,128}) makes PostgreSQL's regular
-- expression engine build a large automaton for every evaluation: the two
-- identifier checks cost more than the rest of recording a callback (34 us per
-- row for transaction_id against 0.7 us written as below, on this machine).
-- Same rules: one or more characters of the class, at most so many. Every row
-- already satisfied the constraint each replaces, which accepts exactly the
-- same values, so the table is not read again (NOT VALID: only new rows and
-- updates are checked); reading a large table here would hold its lock, and
-- every callback, for the length of a scan.
ALTER TABLE idv.transactions
    DROP CONSTRAINT transactions_transaction_id_check,
    DROP CONSTRAINT transactions_merchant_biz_id_check,
    ADD CONSTRAINT transactions_transaction_id_check
        CHECK (transaction_id ~ '^[A-Za-z0-9_-]+$' AND length(transaction_id) <= 128) NOT VALID,
    ADD CONSTRAINT transactions_merchant_biz_id_check
        CHECK (merchant_biz_id ~ '^[A-Za-z0-9]+$' AND length(merchant_biz_id) <= 32) NOT VALID;

-- 6. Recording a batch of callbacks: one statement writes everything.
--
-- Outcomes are those of handling the elements one by one in ordinal order:
--  * accepted: the first element of a transaction whose token is right, when
--    the transaction had no result yet; its result is recorded on the row;
--  * rejected: no transaction of that id, or not this token;
--  * duplicate / conflict: a right token, compared with the result recorded
--    (by this batch, or committed before).
-- The update of a transaction row is the lock that decides which result is
-- first: a concurrent batch (another instance) that recorded one meanwhile
-- makes this update skip the row (callback_passed is no longer NULL when
-- PostgreSQL re-checks the row after waiting). Such an element cannot be
-- decided from this statement's snapshot; a second pass decides it, seeing
-- the other result committed. Rows are locked in transaction_id order (the
-- sorted source of the update), so concurrent batches cannot deadlock on each
-- other.
--
-- The status moves only from initiated or expired (a result confirmed already,
-- by the sweeper, is never overwritten; the callback's own result is still
-- kept). With p_final the status is what idv.result_status() gives, written out
-- here (a SQL function in a query is planned again on every call); without, it
-- becomes callback_received and the confirmation is queued in the same
-- statement (an open sweep item of the transaction does the same CheckResult:
-- it becomes the confirmation).
--
-- Returns one letter per element, in ordinal order: A accepted, D duplicate,
-- C conflict, R rejected (one short text instead of a row per element).
CREATE FUNCTION idv.record_callback_batch(p_tx text[], p_token_hex text[], p_passed text[],
                                          p_sub text[], p_ip text[], p_instance text,
                                          p_final boolean)
RETURNS text
LANGUAGE plpgsql
-- Custom plans would be made for every call, and planning costs more than
-- running: the generic plans (index lookups per element) suit every batch.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_codes text;       -- one letter per element, '?' while undecided
    v_todo  integer[];  -- ordinals still undecided; NULL: every element
    v_more  text;
BEGIN
    FOR i IN 1..3 LOOP
        WITH x AS (
            SELECT x.tx, decode(x.dg, 'hex') AS dg, x.pa, x.sc, x.ip, x.n::integer AS n
            FROM unnest(p_tx, p_token_hex, p_passed, p_sub, p_ip)
                 WITH ORDINALITY AS x (tx, dg, pa, sc, ip, n)
            WHERE v_todo IS NULL OR x.n = ANY (v_todo)),
        -- Per transaction and token, the first element (at most one token of
        -- a transaction is right), with the verdict of its SubCode.
        f AS (
            SELECT DISTINCT ON (x.tx, x.dg) x.tx, x.dg, x.pa, x.sc, x.n,
                   (SELECT v.verdict FROM idv.sub_codes v WHERE v.sub_code = x.sc) AS verdict
            FROM x
            ORDER BY x.tx, x.dg, x.n),
        upd AS (
            UPDATE idv.transactions t
            SET callback_passed = f.pa, callback_sub_code = f.sc, updated_at = now(),
                status = CASE WHEN t.status NOT IN ('initiated', 'expired') THEN t.status
                              WHEN NOT p_final THEN 'callback_received'
                              WHEN f.pa = 'Y' AND f.verdict = 'pass' THEN 'passed'
                              ELSE 'not_passed' END,
                passed = CASE WHEN t.status IN ('initiated', 'expired') THEN f.pa
                              ELSE t.passed END,
                sub_code = CASE WHEN t.status IN ('initiated', 'expired') THEN f.sc
                                ELSE t.sub_code END,
                review_required = CASE WHEN p_final AND t.status IN ('initiated', 'expired')
                                       THEN coalesce(f.verdict, 'review') = 'review'
                                            OR (f.pa = 'Y' AND f.verdict = 'fail')
                                       ELSE t.review_required END,
                confirmed = CASE WHEN p_final AND t.status IN ('initiated', 'expired') THEN false
                                 ELSE t.confirmed END,
                completed_at = CASE WHEN t.status IN ('initiated', 'expired')
                                    THEN coalesce(t.completed_at, now())
                                    ELSE t.completed_at END
            FROM f
            WHERE t.transaction_id = f.tx AND t.callback_token_sha256 = f.dg
              AND t.callback_passed IS NULL
            RETURNING t.id, t.transaction_id, t.merchant_biz_id, t.status, f.dg, f.pa, f.sc, f.n),
        wq AS (
            INSERT INTO idv.work_queue (kind, tx, transaction_id, merchant_biz_id)
            SELECT 'confirm', upd.id, upd.transaction_id, upd.merchant_biz_id
            FROM upd WHERE NOT p_final AND upd.status = 'callback_received'
            ORDER BY upd.transaction_id
            ON CONFLICT (tx) WHERE done_at IS NULL DO NOTHING),
        -- The other elements are compared with the transaction as this
        -- statement sees it (looked up only for transactions not updated here).
        o AS (
            SELECT x.n, x.tx, x.pa, x.sc, x.ip,
                   CASE WHEN a.n = x.n THEN 'accepted'
                        WHEN coalesce(a.dg, r.dg) IS DISTINCT FROM x.dg THEN 'rejected'
                        WHEN coalesce(a.pa, r.pa) IS NULL THEN NULL  -- raced: next pass
                        WHEN coalesce(a.pa, r.pa) = x.pa AND coalesce(a.sc, r.sc) = x.sc
                             THEN 'duplicate'
                        ELSE 'conflict' END AS outcome
            FROM x
            LEFT JOIN upd a ON a.transaction_id = x.tx
            LEFT JOIN LATERAL (
                SELECT t.callback_token_sha256 AS dg, t.callback_passed AS pa,
                       t.callback_sub_code AS sc
                FROM idv.transactions t
                WHERE a.n IS NULL AND t.transaction_id = x.tx) r ON true),
        ev AS (
            INSERT INTO idv.callback_events (outcome, transaction_id, passed, sub_code, client_ip,
                                             instance)
            SELECT o.outcome, o.tx, o.pa, o.sc, nullif(o.ip, '')::inet, p_instance
            FROM o WHERE o.outcome IS NOT NULL
            ORDER BY o.n)
        SELECT string_agg(CASE o.outcome WHEN 'accepted' THEN 'A' WHEN 'duplicate' THEN 'D'
                                         WHEN 'conflict' THEN 'C' WHEN 'rejected' THEN 'R'
                                         ELSE '?' END, '' ORDER BY o.n)
        INTO v_more
        FROM o;
        -- The first pass answers every element; a later one only those left.
        IF v_codes IS NULL THEN
            v_codes := v_more;
        ELSE
            FOR k IN 1..cardinality(v_todo) LOOP
                v_codes := overlay(v_codes PLACING substr(v_more, k, 1) FROM v_todo[k] FOR 1);
            END LOOP;
        END IF;
        IF strpos(v_codes, '?') = 0 THEN
            RETURN v_codes;
        END IF;
        SELECT array_agg(k) INTO v_todo
        FROM generate_series(1, length(v_codes)) k WHERE substr(v_codes, k, 1) = '?';
    END LOOP;
    -- A result recorded concurrently is committed by the time the next pass
    -- starts, so a second pass decides every element; a third is paranoia.
    RAISE EXCEPTION 'record_callback_batch: % element(s) undecided after three passes',
        cardinality(v_todo);
END
$$;

-- The function of 0003, for daemons of the previous version during a rolling
-- upgrade: same arguments and result, the work done by the new one.
CREATE OR REPLACE FUNCTION idv.record_callbacks(p_tx text[], p_token_hex text[],
                                                p_passed text[], p_sub text[], p_ip text[],
                                                p_instance text, p_final boolean)
RETURNS TABLE (ord integer, outcome text)
LANGUAGE sql AS $$
    SELECT k, CASE substr(c.codes, k, 1) WHEN 'A' THEN 'accepted' WHEN 'D' THEN 'duplicate'
                                        WHEN 'C' THEN 'conflict' ELSE 'rejected' END
    FROM (SELECT idv.record_callback_batch(p_tx, p_token_hex, p_passed, p_sub, p_ip, p_instance,
                                           p_final) AS codes) c,
         generate_series(1, length(c.codes)) k;
$$;

-- 7. The sweeper reads its due list: the rows that are due are taken out
-- (DELETE ... RETURNING: an instance sweeping at the same time waits for them,
-- then finds them gone) and their transactions looked at as they are now. The
-- rules are those of 0003: initiated past expires_at + p_grace gets a sweep
-- work item (with credentials) or becomes expired (without: nobody can ask
-- Alibaba); initializing past initiated_at + p_stale is marked failed. A
-- transaction whose times moved later was put in the list again by the
-- trigger. Returns the number of rows it touched.
CREATE OR REPLACE FUNCTION idv.sweep(p_grace interval, p_stale interval, p_can_check boolean)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer := 0;
    k integer;
BEGIN
    WITH d AS (
        DELETE FROM idv.sweep_due s
        WHERE s.kind = 'initializing' AND s.due < now() - p_stale
        RETURNING s.tx)
    UPDATE idv.transactions t
    SET status = 'initialize_failed', upstream_code = 'Abandoned',
        upstream_message = 'left initializing by an interrupted call', updated_at = now()
    WHERE t.id IN (SELECT d.tx FROM d)
      AND t.status = 'initializing' AND t.initiated_at < now() - p_stale;
    GET DIAGNOSTICS k = ROW_COUNT;
    n := n + k;
    IF p_can_check THEN
        WITH d AS (
            DELETE FROM idv.sweep_due s
            WHERE s.kind = 'initiated' AND s.due < now() - p_grace
            RETURNING s.tx)
        INSERT INTO idv.work_queue (kind, tx, transaction_id, merchant_biz_id)
        SELECT 'sweep', t.id, t.transaction_id, t.merchant_biz_id
        FROM idv.transactions t
        WHERE t.id IN (SELECT d.tx FROM d)
          AND t.status = 'initiated' AND t.expires_at < now() - p_grace
          AND NOT EXISTS (SELECT 1 FROM idv.work_queue q WHERE q.tx = t.id)
        ON CONFLICT (tx) WHERE done_at IS NULL DO NOTHING;
    ELSE
        WITH d AS (
            DELETE FROM idv.sweep_due s
            WHERE s.kind = 'initiated' AND s.due < now() - p_grace
            RETURNING s.tx)
        UPDATE idv.transactions t
        SET status = 'expired', updated_at = now()
        WHERE t.id IN (SELECT d.tx FROM d)
          AND t.status = 'initiated' AND t.expires_at < now() - p_grace;
    END IF;
    GET DIAGNOSTICS k = ROW_COUNT;
    RETURN n + k;
END
$$;

REVOKE ALL ON idv.callback_results, idv.sweep_due FROM PUBLIC;
REVOKE ALL ON FUNCTION idv.record_callback_batch(text[], text[], text[], text[], text[], text,
                                                 boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idv.record_callback_batch(text[], text[], text[], text[], text[], text,
                                                    boolean) TO idv_daemon;
GRANT SELECT ON idv.callback_results TO idv_daemon;
GRANT SELECT, DELETE ON idv.sweep_due TO idv_daemon;
REVOKE ALL ON FUNCTION idv.forbid_result_write() FROM PUBLIC;
REVOKE INSERT ON idv.transaction_events FROM idv_daemon;
