-- idv-callbackd: verifications initialized by the daemon itself (Initialize).

ALTER TABLE idv.transactions
    ADD COLUMN transaction_url       text,
    ADD COLUMN protocol              text,
    ADD COLUMN initialize_request_id text,
    ADD COLUMN upstream_code         text,
    ADD COLUMN upstream_message      text,
    ADD COLUMN instance              text;

-- At most one Initialize in flight per merchantBizId, whichever instance runs it.
CREATE UNIQUE INDEX transactions_one_initializing ON idv.transactions (merchant_biz_id)
    WHERE status = 'initializing';

-- Decides what a POST /v1/transactions does, under a per-bizId transaction
-- lock so that instances agree: 'existing' (a live transaction of this bizId:
-- not initialize_failed and not past expires_at), 'in_progress' (one is still
-- initializing), or 'created' (a new row, status initializing, written before
-- Alibaba is called). Rows left initializing longer than p_stale (a crash in
-- the middle of a call) are marked failed first.
CREATE FUNCTION idv.begin_initialize(p_biz text, p_user text, p_token_hex text,
                                     p_instance text, p_stale interval)
RETURNS TABLE (kind text, id bigint, transaction_id text, transaction_url text,
               protocol text, request_id text, expires_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('idv.initialize:' || p_biz, 0));
    UPDATE idv.transactions t
    SET status = 'initialize_failed', upstream_code = 'Abandoned',
        upstream_message = 'left initializing by an interrupted call', updated_at = now()
    WHERE t.merchant_biz_id = p_biz AND t.status = 'initializing'
      AND t.initiated_at < now() - p_stale;
    SELECT t.* INTO r
    FROM idv.transactions t
    WHERE t.merchant_biz_id = p_biz AND t.origin = 'initialized'
      AND (t.status = 'initializing'
           OR (t.status <> 'initialize_failed' AND t.expires_at > now()))
    ORDER BY t.id DESC
    LIMIT 1;
    IF FOUND THEN
        kind := CASE WHEN r.status = 'initializing' THEN 'in_progress' ELSE 'existing' END;
        id := r.id;
        transaction_id := r.transaction_id;
        transaction_url := r.transaction_url;
        protocol := r.protocol;
        request_id := r.initialize_request_id;
        expires_at := r.expires_at;
        RETURN NEXT;
        RETURN;
    END IF;
    INSERT INTO idv.transactions (merchant_biz_id, merchant_user_id, callback_token_sha256,
                                  status, origin, instance)
    VALUES (p_biz, p_user, decode(p_token_hex, 'hex'), 'initializing', 'initialized', p_instance)
    RETURNING idv.transactions.id INTO id;
    kind := 'created';
    RETURN NEXT;
END
$$;

-- Alibaba answered with a transaction: the row becomes initiated and expires
-- 30 minutes from now (TransactionId and TransactionUrl expire then).
CREATE FUNCTION idv.finish_initialize(p_id bigint, p_tx text, p_url text, p_protocol text,
                                      p_request_id text)
RETURNS timestamptz
LANGUAGE sql AS $$
    UPDATE idv.transactions
    SET status = 'initiated', transaction_id = p_tx, transaction_url = p_url,
        protocol = nullif(p_protocol, ''), initialize_request_id = nullif(p_request_id, ''),
        expires_at = now() + interval '30 minutes', updated_at = now()
    WHERE id = p_id
      AND (status = 'initializing'
           OR (status = 'initialize_failed' AND upstream_code = 'Abandoned'))
    RETURNING expires_at;
$$;

-- Alibaba refused, or the answer never came: the row records why.
CREATE FUNCTION idv.fail_initialize(p_id bigint, p_code text, p_message text, p_request_id text)
RETURNS boolean
LANGUAGE sql AS $$
    WITH u AS (
        UPDATE idv.transactions
        SET status = 'initialize_failed', upstream_code = p_code,
            upstream_message = left(p_message, 1000),
            initialize_request_id = nullif(p_request_id, ''), updated_at = now()
        WHERE id = p_id AND status = 'initializing'
        RETURNING 1)
    SELECT count(*) = 1 FROM u;
$$;

CREATE OR REPLACE VIEW idv.transaction_status AS
SELECT t.transaction_id, t.merchant_biz_id, t.status, t.passed, t.sub_code, t.initiated_at,
       t.completed_at, t.confirmed, t.expires_at, t.merchant_user_id, t.origin,
       t.upstream_code, t.upstream_message
FROM idv.transactions t;

REVOKE ALL ON FUNCTION idv.begin_initialize(text, text, text, text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION idv.finish_initialize(bigint, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION idv.fail_initialize(bigint, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idv.begin_initialize(text, text, text, text, interval) TO idv_daemon;
GRANT EXECUTE ON FUNCTION idv.finish_initialize(bigint, text, text, text, text) TO idv_daemon;
GRANT EXECUTE ON FUNCTION idv.fail_initialize(bigint, text, text, text) TO idv_daemon;
GRANT SELECT ON idv.transaction_status TO idv_daemon, idv_reader;
