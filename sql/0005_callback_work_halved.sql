-- Half the database work per accepted callback (issue 15).
--
-- Before, an accepted callback wrote four rows (idv.callback_results,
-- idv.transactions, idv.transaction_events, idv.callback_events), ten index
-- entries, two foreign-key checks (each a row lock, with its WAL record, on the
-- idv.transactions row), a speculative insertion (ON CONFLICT), called a
-- statement trigger, and evaluated two regular expressions that cost more than
-- the rest. Now it writes three rows and three index entries (the update of
-- idv.transactions is a HOT update: no index changes), checks no foreign key,
-- calls no trigger, and the update it makes anyway is the lock that decides
-- "first result wins" (README, Performance, has the measurements):
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
--  * Status events are written by the status trigger and, for the statuses
--    callbacks move, by idv.record_callback_batch in the same statement (see
--    3. and 6.); both read the row they record, so the row an event points to
--    exists: the foreign key transaction_events.tx -> transactions, checked
--    (and locked) per event, proved nothing more. Both run with their owner's
--    rights and idv_daemon loses INSERT on idv.transaction_events: an event
--    cannot be written without the status change it records. The same
--    reasoning drops the foreign keys of idv.check_results and idv.work_queue:
--    their rows are written by functions that have just read or locked the
--    transaction row (complete_confirmation, record_callback_batch, sweep).
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
                    'idv.record_callback_batch and never changed'
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

-- 3. Status events and the due list, for every writer but the batch
-- function of callbacks.
--
-- idv.record_callback_batch (below) writes the events of the statuses it
-- changes itself, in the same statement, each with its NOTIFY: it knows the
-- previous status (it read the row) and the new one. It runs as idv_recorder,
-- a role nobody logs in as, and the status trigger is silent for that role
-- only; for everyone else (confirmation, sweeper, Initialize, registration, an
-- operator's UPDATE) it writes the event, as before. A row trigger whose WHEN
-- is false costs an expression per row: no call, no transition table; a
-- statement trigger with transition tables copies every changed row twice
-- (old and new) whether or not it has anything to do. The other paths change
-- one row per statement, or a handful (the sweeper).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'idv_recorder') THEN
        CREATE ROLE idv_recorder NOLOGIN;
    END IF;
END
$$;

-- The NOTIFY payload: the text json_build_object() gave, byte for byte,
-- written out (json_build_object() looked up the type of each of its sixteen
-- arguments on every call: more than the rest of writing the event). Only
-- sub_code needs JSON escaping (CheckResult may send anything);
-- transaction_id and merchant_biz_id are restricted to [A-Za-z0-9_-] by CHECK
-- constraints, status to its names, passed to Y/N.
CREATE FUNCTION idv.status_payload(e idv.transaction_events) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT '{"eventId" : ' || e.id
        || ', "transactionId" : ' || coalesce('"' || e.transaction_id || '"', 'null')
        || ', "merchantBizId" : "' || e.merchant_biz_id
        || '", "status" : "' || e.status
        || '", "previousStatus" : ' || coalesce('"' || e.previous_status || '"', 'null')
        || ', "passed" : ' || coalesce('"' || e.passed || '"', 'null')
        || ', "subCode" : ' || coalesce(to_json(e.sub_code)::text, 'null')
        || ', "confirmed" : ' || e.confirmed || '}'
$$;

-- New rows (registration, Initialize): one statement per INSERT, each event
-- with its NOTIFY, and the due list.
CREATE OR REPLACE FUNCTION idv.on_status_change_set() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_n bigint;
BEGIN
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
    SELECT count(pg_notify('idv_transaction_status', idv.status_payload(e))) INTO v_n
    FROM ev e;
    RETURN NULL;
END
$$;
DROP TRIGGER transactions_status_update ON idv.transactions;

-- A changed row: its event and NOTIFY when the status moved, its place in the
-- due list when its due time moved, and a recorded callback result never
-- changes (it used to be kept in an append-only table): an UPDATE that would
-- change one fails, whoever makes it.
CREATE FUNCTION idv.on_status_change_row() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    e idv.transaction_events;
BEGIN
    IF OLD.callback_passed IS NOT NULL
       AND (NEW.callback_passed, NEW.callback_sub_code)
           IS DISTINCT FROM (OLD.callback_passed, OLD.callback_sub_code) THEN
        RAISE EXCEPTION 'a recorded callback result is never changed'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO idv.transaction_events (tx, transaction_id, merchant_biz_id, status,
                                            previous_status, passed, sub_code, confirmed)
        VALUES (NEW.id, NEW.transaction_id, NEW.merchant_biz_id, NEW.status, OLD.status,
                NEW.passed, NEW.sub_code, NEW.confirmed)
        RETURNING * INTO e;
        PERFORM pg_notify('idv_transaction_status', idv.status_payload(e));
    END IF;
    IF NEW.status = 'initializing' OR (NEW.status = 'initiated' AND NEW.expires_at IS NOT NULL) THEN
        IF NEW.status IS DISTINCT FROM OLD.status OR NEW.expires_at IS DISTINCT FROM OLD.expires_at
           OR NEW.initiated_at IS DISTINCT FROM OLD.initiated_at THEN
            INSERT INTO idv.sweep_due (kind, due, tx)
            VALUES (NEW.status, CASE WHEN NEW.status = 'initiated' THEN NEW.expires_at
                                     ELSE NEW.initiated_at END, NEW.id);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER transactions_status_change AFTER UPDATE ON idv.transactions
    FOR EACH ROW
    WHEN ((OLD.status IS DISTINCT FROM NEW.status
           OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
           OR OLD.initiated_at IS DISTINCT FROM NEW.initiated_at
           OR OLD.callback_passed IS DISTINCT FROM NEW.callback_passed
           OR OLD.callback_sub_code IS DISTINCT FROM NEW.callback_sub_code)
          AND current_user <> 'idv_recorder')
    EXECUTE FUNCTION idv.on_status_change_row();

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
-- Each element costs one index lookup: the row it names, read once, gives the
-- token to check, a result already recorded, the previous status, and the
-- row version the update then goes to directly (by its ctid). That update is
-- the lock that decides which result is first: if another transaction changed
-- the row since this statement's snapshot (another instance recorded a result,
-- the sweeper expired it), the row version is no longer the one read, the
-- update skips it, and the element cannot be decided from this snapshot; a
-- second pass, with a new snapshot, decides it. Rows are updated in
-- transaction_id order, so concurrent batches cannot deadlock on each other.
--
-- The status moves only from initiated or expired (a result confirmed already,
-- by the sweeper, is never overwritten; the callback's own result is still
-- kept). With p_final the status is what idv.result_status() gives, written out
-- here (a SQL function in a query is planned again on every call); without, it
-- becomes callback_received and the confirmation is queued in the same
-- statement (an open sweep item of the transaction does the same CheckResult:
-- it becomes the confirmation). Each status moved gets its event and NOTIFY in
-- the same statement (the status trigger is silent for this function's role,
-- see above).
--
-- Returns one letter per element, in ordinal order: A accepted, D duplicate,
-- C conflict, R rejected (one short text instead of a row per element).
CREATE FUNCTION idv.record_callback_batch(p_tx text[], p_token_hex text[], p_passed text[],
                                          p_sub text[], p_ip text[], p_instance text,
                                          p_final boolean)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
-- Custom plans would be made for every call, and planning costs more than
-- running: the generic plans (index lookups per element) suit every batch.
SET plan_cache_mode = force_generic_plan
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_codes text;       -- one letter per element, '?' while undecided
    v_todo  integer[];  -- ordinals still undecided; NULL: every element
    v_more  text;
    v_n     bigint;
BEGIN
    FOR i IN 1..3 LOOP
        WITH u AS (
            SELECT x.tx, x.pa, x.sc, x.ip, x.n::integer AS n, t.ctid AS tid, t.status,
                   t.callback_passed AS rp, t.callback_sub_code AS rs,
                   t.callback_token_sha256 = decode(x.dg, 'hex') AS valid  -- NULL: no such row
            FROM unnest(p_tx, p_token_hex, p_passed, p_sub, p_ip)
                 WITH ORDINALITY AS x (tx, dg, pa, sc, ip, n)
            LEFT JOIN idv.transactions t ON t.transaction_id = x.tx
            WHERE v_todo IS NULL OR x.n = ANY (v_todo)),
        -- The first element of each transaction that can record a result, with
        -- the verdict of its SubCode.
        f AS (
            SELECT DISTINCT ON (u.tx) u.tx, u.tid, u.status AS prev, u.pa, u.sc, u.n, v.verdict
            FROM u LEFT JOIN idv.sub_codes v ON v.sub_code = u.sc
            WHERE u.valid AND u.rp IS NULL
            ORDER BY u.tx, u.n),
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
            WHERE t.ctid = f.tid AND t.callback_passed IS NULL
            RETURNING t.id, t.transaction_id, t.merchant_biz_id, t.status, t.passed, t.sub_code,
                      t.confirmed, f.prev, f.pa, f.sc, f.n),
        ev AS (
            INSERT INTO idv.transaction_events (tx, transaction_id, merchant_biz_id, status,
                                                previous_status, passed, sub_code, confirmed)
            SELECT upd.id, upd.transaction_id, upd.merchant_biz_id, upd.status, upd.prev,
                   upd.passed, upd.sub_code, upd.confirmed
            FROM upd WHERE upd.status IS DISTINCT FROM upd.prev
            RETURNING *),
        wq AS (
            INSERT INTO idv.work_queue (kind, tx, transaction_id, merchant_biz_id)
            SELECT 'confirm', upd.id, upd.transaction_id, upd.merchant_biz_id
            FROM upd WHERE NOT p_final AND upd.status = 'callback_received'
            ORDER BY upd.transaction_id
            ON CONFLICT (tx) WHERE done_at IS NULL DO NOTHING),
        o AS (
            SELECT u.n, u.tx, u.pa, u.sc, u.ip,
                   CASE WHEN a.n = u.n THEN 'accepted'
                        WHEN NOT coalesce(u.valid, false) THEN 'rejected'
                        WHEN coalesce(a.pa, u.rp) IS NULL THEN NULL  -- raced: next pass
                        WHEN coalesce(a.pa, u.rp) = u.pa AND coalesce(a.sc, u.rs) = u.sc
                             THEN 'duplicate'
                        ELSE 'conflict' END AS outcome
            FROM u LEFT JOIN upd a ON a.transaction_id = u.tx),
        au AS (
            INSERT INTO idv.callback_events (outcome, transaction_id, passed, sub_code, client_ip,
                                             instance)
            SELECT o.outcome, o.tx, o.pa, o.sc, nullif(o.ip, '')::inet, p_instance
            FROM o WHERE o.outcome IS NOT NULL
            ORDER BY o.n)
        SELECT string_agg(CASE o.outcome WHEN 'accepted' THEN 'A' WHEN 'duplicate' THEN 'D'
                                         WHEN 'conflict' THEN 'C' WHEN 'rejected' THEN 'R'
                                         ELSE '?' END, '' ORDER BY o.n),
               (SELECT count(pg_notify('idv_transaction_status', idv.status_payload(e)))
                FROM ev e)
        INTO v_more, v_n
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
    -- A row changed concurrently is committed by the time the next pass
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
                                                 boolean), idv.forbid_result_write(),
    idv.on_status_change_row(), idv.status_payload(idv.transaction_events) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idv.record_callback_batch(text[], text[], text[], text[], text[], text,
                                                    boolean) TO idv_daemon;
GRANT SELECT ON idv.callback_results TO idv_daemon;
GRANT SELECT, DELETE ON idv.sweep_due TO idv_daemon;
REVOKE INSERT ON idv.transaction_events FROM idv_daemon;

-- idv_recorder: what recording callbacks needs, nothing else; it owns
-- idv.record_callback_batch, which runs with its rights (SECURITY DEFINER).
-- Changing a function's owner needs membership in the new owner and the
-- owner's CREATE on the schema, granted for that moment only.
GRANT USAGE ON SCHEMA idv TO idv_recorder;
GRANT SELECT, UPDATE ON idv.transactions TO idv_recorder;
GRANT SELECT, INSERT ON idv.transaction_events TO idv_recorder;
GRANT INSERT ON idv.callback_events TO idv_recorder;
GRANT SELECT, INSERT ON idv.work_queue TO idv_recorder;  -- ON CONFLICT reads the arbiter
GRANT SELECT ON idv.sub_codes TO idv_recorder;
GRANT EXECUTE ON FUNCTION idv.status_payload(idv.transaction_events) TO idv_recorder;
DO $$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT idv_recorder TO %I', current_user);
    END IF;
END
$$;
GRANT CREATE ON SCHEMA idv TO idv_recorder;
ALTER FUNCTION idv.record_callback_batch(text[], text[], text[], text[], text[], text, boolean)
    OWNER TO idv_recorder;
REVOKE CREATE ON SCHEMA idv FROM idv_recorder;
