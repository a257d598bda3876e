-- idv-callbackd: the foundation schema.
-- Applied by `idv-callbackd migrate` in one transaction, under an advisory lock.
-- Column names of idv.transactions, idv.callback_events and idv.transaction_status
-- are a contract (see README); tables may grow, never lose them.

DO $$
BEGIN
    -- Roles are cluster-wide: another database of the cluster may have made them.
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'idv_daemon') THEN
        CREATE ROLE idv_daemon NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'idv_reader') THEN
        CREATE ROLE idv_reader NOLOGIN;
    END IF;
END
$$;

REVOKE ALL ON SCHEMA idv FROM PUBLIC;
GRANT USAGE ON SCHEMA idv TO idv_daemon, idv_reader;

-- One row per verification. While Initialize is in flight the row exists with
-- status 'initializing' and no transaction_id yet (Alibaba has not given one).
CREATE TABLE idv.transactions (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id        text UNIQUE CHECK (transaction_id ~ '^[A-Za-z0-9_-]{1,128}$'),
    merchant_biz_id       text NOT NULL CHECK (merchant_biz_id ~ '^[A-Za-z0-9]{1,32}$'),
    merchant_user_id      text CHECK (length(merchant_user_id) BETWEEN 1 AND 128),
    callback_token_sha256 bytea NOT NULL UNIQUE CHECK (length(callback_token_sha256) = 32),
    status                text NOT NULL CHECK (status IN ('initializing', 'initialize_failed',
                              'initiated', 'callback_received', 'passed', 'not_passed', 'expired')),
    origin                text NOT NULL CHECK (origin IN ('registered', 'initialized')),
    initiated_at          timestamptz NOT NULL DEFAULT now(),
    expires_at            timestamptz,
    passed                text CHECK (passed IN ('Y', 'N')),
    sub_code              text,
    completed_at          timestamptz,
    confirmed             boolean NOT NULL DEFAULT false,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CHECK (status IN ('initializing', 'initialize_failed') OR transaction_id IS NOT NULL)
);
CREATE INDEX transactions_merchant_biz_id ON idv.transactions (merchant_biz_id);
CREATE INDEX transactions_open ON idv.transactions (expires_at)
    WHERE status IN ('initializing', 'initiated', 'callback_received');

-- The first result of a transaction's callback. Its primary key is what decides
-- "first result wins", whichever instance received it.
CREATE TABLE idv.callback_results (
    transaction_id text PRIMARY KEY REFERENCES idv.transactions (transaction_id),
    passed         text NOT NULL CHECK (passed IN ('Y', 'N')),
    sub_code       text NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now(),
    instance       text NOT NULL
);

-- Every callback request that reached the handler. Append-only. Tokens never
-- appear here, not even as digests.
CREATE TABLE idv.callback_events (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at    timestamptz NOT NULL DEFAULT now(),
    outcome        text NOT NULL CHECK (outcome IN ('accepted', 'duplicate', 'conflict',
                       'rejected', 'malformed')),
    transaction_id text,
    passed         text,
    sub_code       text,
    client_ip      inet,
    instance       text NOT NULL,
    reason         text
);
CREATE INDEX callback_events_transaction_id ON idv.callback_events (transaction_id);
CREATE INDEX callback_events_received_at ON idv.callback_events (received_at);

-- Every status change, in the transaction that made it. Append-only. Consumers
-- catch up by (xid, id) below the oldest running transaction (see README).
CREATE TABLE idv.transaction_events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid             xid8 NOT NULL DEFAULT pg_current_xact_id(),
    at              timestamptz NOT NULL DEFAULT now(),
    tx              bigint NOT NULL REFERENCES idv.transactions (id),
    transaction_id  text,
    merchant_biz_id text NOT NULL,
    status          text NOT NULL,
    previous_status text,
    passed          text,
    sub_code        text,
    confirmed       boolean NOT NULL
);
CREATE INDEX transaction_events_xid ON idv.transaction_events (xid, id);
CREATE INDEX transaction_events_transaction_id ON idv.transaction_events (transaction_id);

CREATE FUNCTION idv.forbid_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'idv.% is append-only', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER callback_events_append_only BEFORE UPDATE OR DELETE ON idv.callback_events
    FOR EACH ROW EXECUTE FUNCTION idv.forbid_change();
CREATE TRIGGER callback_events_no_truncate BEFORE TRUNCATE ON idv.callback_events
    FOR EACH STATEMENT EXECUTE FUNCTION idv.forbid_change();
CREATE TRIGGER transaction_events_append_only BEFORE UPDATE OR DELETE ON idv.transaction_events
    FOR EACH ROW EXECUTE FUNCTION idv.forbid_change();
CREATE TRIGGER transaction_events_no_truncate BEFORE TRUNCATE ON idv.transaction_events
    FOR EACH STATEMENT EXECUTE FUNCTION idv.forbid_change();
CREATE TRIGGER callback_results_append_only BEFORE UPDATE OR DELETE ON idv.callback_results
    FOR EACH ROW EXECUTE FUNCTION idv.forbid_change();
CREATE TRIGGER callback_results_no_truncate BEFORE TRUNCATE ON idv.callback_results
    FOR EACH STATEMENT EXECUTE FUNCTION idv.forbid_change();

-- Every status change appends an event and notifies, in the same transaction.
CREATE FUNCTION idv.on_status_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_prev text := CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END;
    v_id   bigint;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.status IS NOT DISTINCT FROM OLD.status THEN
        RETURN NULL;
    END IF;
    INSERT INTO idv.transaction_events (tx, transaction_id, merchant_biz_id, status,
                                        previous_status, passed, sub_code, confirmed)
    VALUES (NEW.id, NEW.transaction_id, NEW.merchant_biz_id, NEW.status, v_prev, NEW.passed,
            NEW.sub_code, NEW.confirmed)
    RETURNING id INTO v_id;
    PERFORM pg_notify('idv_transaction_status', json_build_object(
        'eventId', v_id, 'transactionId', NEW.transaction_id,
        'merchantBizId', NEW.merchant_biz_id, 'status', NEW.status,
        'previousStatus', v_prev, 'passed', NEW.passed, 'subCode', NEW.sub_code,
        'confirmed', NEW.confirmed)::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER transactions_status_change AFTER INSERT OR UPDATE OF status ON idv.transactions
    FOR EACH ROW EXECUTE FUNCTION idv.on_status_change();

CREATE VIEW idv.transaction_status AS
SELECT t.transaction_id, t.merchant_biz_id, t.status, t.passed, t.sub_code, t.initiated_at,
       t.completed_at, t.confirmed, t.expires_at, t.merchant_user_id
FROM idv.transactions t;

-- Records a batch of valid callbacks in one transaction (group commit).
-- Elements are handled in transaction_id order so that concurrent batches take
-- their locks in the same order and cannot deadlock. p_final: no CheckResult
-- will follow, the callback's result is the final word.
CREATE FUNCTION idv.record_callbacks(p_tx text[], p_token_hex text[], p_passed text[],
                                     p_sub text[], p_ip text[], p_instance text,
                                     p_final boolean)
RETURNS TABLE (ord integer, outcome text)
LANGUAGE plpgsql AS $$
DECLARE
    r      record;
    v_tx   text;
    v_prev record;
    v_n    integer;
BEGIN
    FOR r IN
        SELECT u.tx, decode(u.dg, 'hex') AS dg, u.pa, u.sc, nullif(u.ip, '')::inet AS ip,
               u.n::integer AS n
        FROM unnest(p_tx, p_token_hex, p_passed, p_sub, p_ip)
             WITH ORDINALITY AS u (tx, dg, pa, sc, ip, n)
        ORDER BY u.tx, u.n
    LOOP
        SELECT t.transaction_id INTO v_tx
        FROM idv.transactions t WHERE t.callback_token_sha256 = r.dg;
        IF NOT FOUND OR v_tx IS DISTINCT FROM r.tx THEN
            outcome := 'rejected';
        ELSE
            INSERT INTO idv.callback_results (transaction_id, passed, sub_code, instance)
            VALUES (r.tx, r.pa, r.sc, p_instance)
            ON CONFLICT (transaction_id) DO NOTHING;
            GET DIAGNOSTICS v_n = ROW_COUNT;
            IF v_n = 1 THEN
                outcome := 'accepted';
                UPDATE idv.transactions
                SET status = CASE WHEN NOT p_final THEN 'callback_received'
                                  WHEN r.pa = 'Y' THEN 'passed' ELSE 'not_passed' END,
                    passed = r.pa, sub_code = r.sc, confirmed = false,
                    completed_at = coalesce(completed_at, now()), updated_at = now()
                WHERE transaction_id = r.tx AND status IN ('initiated', 'expired');
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

-- Audit rows of requests answered without a lookup (malformed), in a batch.
-- They are written after the answer, and wait in the daemon while PostgreSQL
-- is away: p_received (epoch seconds) says when each request arrived, so that
-- received_at does not become the time of the write. Rows get their ids in the
-- order given.
CREATE FUNCTION idv.record_events(p_outcome text[], p_tx text[], p_passed text[],
                                  p_sub text[], p_ip text[], p_reason text[],
                                  p_instance text, p_received double precision[])
RETURNS integer
LANGUAGE sql AS $$
    INSERT INTO idv.callback_events (received_at, outcome, transaction_id, passed, sub_code,
                                     client_ip, instance, reason)
    SELECT coalesce(to_timestamp(u.rt), now()), u.o, u.tx, u.pa, u.sc, nullif(u.ip, '')::inet,
           p_instance, u.re
    FROM unnest(p_outcome, p_tx, p_passed, p_sub, p_ip, p_reason, p_received)
         WITH ORDINALITY AS u (o, tx, pa, sc, ip, re, rt, n)
    ORDER BY u.n;
    SELECT coalesce(array_length(p_outcome, 1), 0);
$$;

-- Records a transaction the business initialized itself.
-- Returns 'created', 'exists' (same id, bizId and token), 'conflict' (the id
-- exists with another bizId or token) or 'token_in_use'.
CREATE FUNCTION idv.register_transaction(p_tx text, p_biz text, p_user text, p_token_hex text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v record;
BEGIN
    INSERT INTO idv.transactions (transaction_id, merchant_biz_id, merchant_user_id,
                                  callback_token_sha256, status, origin, expires_at)
    VALUES (p_tx, p_biz, nullif(p_user, ''), decode(p_token_hex, 'hex'), 'initiated',
            'registered', now() + interval '30 minutes')
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        RETURN 'created';
    END IF;
    SELECT t.merchant_biz_id, t.callback_token_sha256 INTO v
    FROM idv.transactions t WHERE t.transaction_id = p_tx;
    IF NOT FOUND THEN
        RETURN 'token_in_use';
    END IF;
    IF v.merchant_biz_id = p_biz AND v.callback_token_sha256 = decode(p_token_hex, 'hex') THEN
        RETURN 'exists';
    END IF;
    RETURN 'conflict';
END
$$;

-- Least privilege. Functions run with the caller's rights, so the grants below
-- are exactly what the daemon can do; the append-only triggers hold even for the
-- owner.
REVOKE ALL ON ALL TABLES IN SCHEMA idv FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA idv FROM PUBLIC;
GRANT SELECT ON idv.schema_migrations TO idv_daemon, idv_reader;
GRANT SELECT, INSERT, UPDATE ON idv.transactions TO idv_daemon;
GRANT SELECT, INSERT ON idv.callback_results TO idv_daemon;
GRANT INSERT ON idv.callback_events TO idv_daemon;
GRANT INSERT, SELECT (id) ON idv.transaction_events TO idv_daemon;
GRANT SELECT ON idv.transaction_status TO idv_daemon;
GRANT EXECUTE ON FUNCTION idv.record_callbacks(text[], text[], text[], text[], text[], text,
                                               boolean) TO idv_daemon;
GRANT EXECUTE ON FUNCTION idv.record_events(text[], text[], text[], text[], text[], text[], text,
                                            double precision[]) TO idv_daemon;
GRANT EXECUTE ON FUNCTION idv.register_transaction(text, text, text, text) TO idv_daemon;
GRANT EXECUTE ON FUNCTION idv.on_status_change() TO idv_daemon;
GRANT EXECUTE ON FUNCTION idv.forbid_change() TO idv_daemon;
GRANT SELECT ON idv.transaction_status, idv.callback_events, idv.transaction_events
    TO idv_reader;
