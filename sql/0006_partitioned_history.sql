-- idv-callbackd: partitioned history, partitions made ahead, retention.
--
-- The append-only history tables (idv.callback_events, idv.transaction_events,
-- idv.check_results) become range-partitioned by their time column, one
-- partition per calendar month (UTC), plus a DEFAULT partition that catches
-- any row no partition covers: a missing partition never makes an insert fail.
-- Native partitioning, no extension: see README, "PostgreSQL", for why not
-- pg_partman.
--
-- This file only prepares: it creates the partitioned tables beside the
-- existing ones (suffix _new) and triggers that copy every row inserted from
-- now on into them. `idv-callbackd migrate` then moves the existing rows in
-- batches (idv.history_migrate_step: progress, short transactions) and swaps
-- the tables in one short transaction per table; see daemon/migrate.c.
--
-- Who may do what:
--  * idv_daemon may make partitions ahead (idv.history_make_partitions and
--    the repair of a DEFAULT partition that caught rows): that creates empty
--    tables, nothing else;
--  * idv_maintainer (a new group role) may also drop partitions older than a
--    retention (idv.history_drop_partition): only it can take history away.
-- Both run SECURITY DEFINER functions owned by the role that ran migrate (the
-- owner of the tables: only an owner may attach or drop a partition); neither
-- needs a superuser, and neither gets any other right on the tables.

-- Every lock below is waited for at most 2 s (migrate then retries the file):
-- a lock request that waits also holds back the requests queued behind it.
SET LOCAL lock_timeout = '2s';

-- First, before any lock that holds callbacks back: the oldest row of each
-- table (scans), for the partitions to make.
CREATE TEMPORARY TABLE history_oldest ON COMMIT DROP AS
SELECT 'callback_events' AS table_name, (SELECT min(received_at) FROM idv.callback_events) AS oldest
UNION ALL
SELECT 'transaction_events', (SELECT min(at) FROM idv.transaction_events)
UNION ALL
SELECT 'check_results', (SELECT min(checked_at) FROM idv.check_results);

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'idv_maintainer') THEN
        CREATE ROLE idv_maintainer NOLOGIN;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA idv TO idv_maintainer;

-- ---- registry ------------------------------------------------------------------

-- The partitioned history tables, their partition key, and the state of a
-- repair of their DEFAULT partition (fence_*: see history_repair_default).
CREATE TABLE idv.history_tables (
    table_name   text PRIMARY KEY,
    key_column   text NOT NULL,
    -- how a row names its transaction, for the retention's check of live
    -- transactions: 'transaction_id' (text) or 'tx' (idv.transactions.id)
    link_column  text NOT NULL CHECK (link_column IN ('transaction_id', 'tx')),
    fence_from   timestamptz,
    fence_to     timestamptz,
    CHECK ((fence_from IS NULL) = (fence_to IS NULL))
);
INSERT INTO idv.history_tables (table_name, key_column, link_column) VALUES
    ('callback_events', 'received_at', 'transaction_id'),
    ('transaction_events', 'at', 'tx'),
    ('check_results', 'checked_at', 'tx');

-- Every partition retention dropped: what a consumer that fell behind lost.
-- For transaction_events, the (xid, id) range of the events that went with it.
CREATE TABLE idv.history_drops (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name     text NOT NULL,
    partition_name text NOT NULL,
    range_from     timestamptz NOT NULL,
    range_to       timestamptz NOT NULL,
    row_count      bigint NOT NULL,  -- counted just before the drop
    first_xid      xid8,
    first_id       bigint,
    last_xid       xid8,
    last_id        bigint,
    dropped_at     timestamptz NOT NULL DEFAULT now(),
    dropped_by     text NOT NULL DEFAULT session_user
);

-- ---- partitions: what exists ---------------------------------------------------

-- The partitions of a history table (p_table: its name in schema idv, with the
-- suffix _new before the swap) with their bounds; a DEFAULT partition has
-- is_default and no bounds. MINVALUE/MAXVALUE read as -infinity/infinity.
CREATE FUNCTION idv.history_partitions(p_table text)
RETURNS TABLE (partition_name text, is_default boolean, range_from timestamptz,
               range_to timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
-- Bounds are printed in the session's time zone: fixed here, so that they read
-- back exactly.
SET TimeZone = 'UTC'
AS $$
    SELECT c.relname::text, b.bound = 'DEFAULT',
           CASE m[1] WHEN 'MINVALUE' THEN '-infinity' WHEN 'MAXVALUE' THEN 'infinity'
                     ELSE btrim(m[1], '''')::timestamptz END,
           CASE m[2] WHEN 'MINVALUE' THEN '-infinity' WHEN 'MAXVALUE' THEN 'infinity'
                     ELSE btrim(m[2], '''')::timestamptz END
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS bound) b
    LEFT JOIN LATERAL regexp_match(b.bound, '^FOR VALUES FROM \((.*)\) TO \((.*)\)$') m ON true
    WHERE i.inhparent = to_regclass(format('idv.%I', p_table))
    ORDER BY 2, 3;
$$;

-- The history table a name belongs to ('callback_events' for
-- 'callback_events_new'), or an error: every function below checks its
-- argument against the registry before it builds a statement with it.
CREATE FUNCTION idv.history_base(p_table text) RETURNS idv.history_tables
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r idv.history_tables;
BEGIN
    SELECT * INTO r FROM idv.history_tables h
    WHERE h.table_name = p_table OR h.table_name || '_new' = p_table;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'idv.%: not a partitioned history table', p_table
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN r;
END
$$;

-- The name of the partition starting at p_from: <table>_pYYYYMMDD (UTC), or
-- <table>_pmin for the lowest one.
CREATE FUNCTION idv.history_partition_name(p_table text, p_from timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE
SET TimeZone = 'UTC'
AS $$
    SELECT regexp_replace(p_table, '_new$', '') || '_p'
           || CASE WHEN p_from = '-infinity' THEN 'min' ELSE to_char(p_from, 'YYYYMMDD') END;
$$;

-- ---- partitions: making them ----------------------------------------------------

-- Creates the partition [p_from, p_to) of p_table as a plain table first and
-- then attaches it: ATTACH takes SHARE UPDATE EXCLUSIVE on the parent, which
-- does not stop inserts (CREATE TABLE ... PARTITION OF would take ACCESS
-- EXCLUSIVE). The DEFAULT partition is scanned for rows of the new range
-- (under ACCESS EXCLUSIVE on the DEFAULT partition only): callers make sure it
-- is empty or fenced (see history_repair_default), so that scan is instant.
-- Row triggers of the parent (append-only) are cloned by ATTACH; statement
-- triggers are not, so the TRUNCATE guard is added here.
CREATE FUNCTION idv.history_add_partition(p_table text, p_from timestamptz, p_to timestamptz)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_name text := idv.history_partition_name(p_table, p_from);
BEGIN
    PERFORM idv.history_base(p_table);
    EXECUTE format('CREATE TABLE idv.%I (LIKE idv.%I INCLUDING CONSTRAINTS)', v_name, p_table);
    EXECUTE format('ALTER TABLE idv.%I ATTACH PARTITION idv.%I FOR VALUES FROM (%L) TO (%L)',
                   p_table, v_name, p_from, p_to);
    EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON idv.%I'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION idv.forbid_change()',
                   v_name || '_no_truncate', v_name);
    RETURN format('created partition idv.%s [%s, %s)', v_name, p_from, p_to);
END
$$;

-- Makes sure p_table has a partition for every instant of [p_from, p_to):
-- one per calendar month (UTC), or the part of a month no partition covers
-- yet. Past ranges are not filled in (rows of an uncovered past range are in
-- the DEFAULT partition; history_repair_default turns them into a partition).
-- Returns one line per partition made. Stops (returns 'default partition holds
-- rows') when the DEFAULT partition is not empty: attaching would scan it while
-- holding a lock that stops the inserts it catches; the caller repairs it
-- first.
CREATE FUNCTION idv.history_make_partitions(p_table text, p_from timestamptz, p_to timestamptz)
RETURNS SETOF text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    h      idv.history_tables := idv.history_base(p_table);
    v_def  text;
    v_m    timestamptz;
    v_a    timestamptz;
    v_b    timestamptz;
    v_full boolean;
BEGIN
    SELECT p.partition_name INTO v_def FROM idv.history_partitions(p_table) p WHERE p.is_default;
    IF v_def IS NULL THEN
        v_def := regexp_replace(p_table, '_new$', '') || '_default';
        EXECUTE format('CREATE TABLE idv.%I PARTITION OF idv.%I DEFAULT', v_def, p_table);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON idv.%I'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION idv.forbid_change()',
                       v_def || '_no_truncate', v_def);
        RETURN NEXT format('created partition idv.%s DEFAULT', v_def);
    END IF;
    v_m := date_trunc('month', p_from);
    WHILE v_m < p_to LOOP
        -- The uncovered parts of [v_m, v_m + 1 month), lowest first.
        v_a := v_m;
        WHILE v_a < v_m + interval '1 month' LOOP
            SELECT p.range_to INTO v_b FROM idv.history_partitions(p_table) p
            WHERE NOT p.is_default AND p.range_from <= v_a AND p.range_to > v_a;
            IF FOUND THEN
                v_a := v_b;  -- covered up to there
                CONTINUE;
            END IF;
            SELECT least(min(p.range_from), v_m + interval '1 month') INTO v_b
            FROM idv.history_partitions(p_table) p
            WHERE NOT p.is_default AND p.range_from > v_a;
            -- A DEFAULT partition of a few rows (say, a late audit row of a
            -- range retention dropped) is scanned in a blink; a large one is
            -- repaired first.
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM idv.%I)', v_def) INTO v_full;
            IF v_full AND pg_relation_size(format('idv.%I', v_def)::regclass) > 1024 * 1024 THEN
                RETURN NEXT format('default partition idv.%s holds rows: repair needed', v_def);
                RETURN;
            END IF;
            BEGIN
                RETURN NEXT idv.history_add_partition(p_table, v_a, v_b);
            EXCEPTION WHEN check_violation THEN
                RETURN NEXT format('default partition idv.%s holds rows of [%s, %s): repair'
                                   ' needed', v_def, v_a, v_b);
                RETURN;
            END;
            v_a := v_b;
        END LOOP;
        v_m := v_m + interval '1 month';
    END LOOP;
END
$$;

-- Turns the rows the DEFAULT partition caught into an ordinary partition,
-- without a long lock: one step per call (each its own transaction), the
-- state kept in idv.history_tables.fence_*:
--  1. fence: a CHECK constraint (NOT VALID: instant) saying the DEFAULT
--     partition holds only [lo, hi), where lo..hi is the gap between
--     partitions its rows are in and hi is at least a day ahead of now;
--  2. validate it: a scan under SHARE UPDATE EXCLUSIVE, which lets inserts go on;
--  3. swap, in one short transaction: detach the DEFAULT partition, make a
--     new empty one, attach the old one FOR VALUES FROM (lo) TO (hi) (the
--     validated fence proves the bound: no scan).
-- Returns what it did (NULL: nothing to repair) and whether another step
-- follows. When the rows
-- are in more than one gap it cannot make one partition of them: it says so
-- and leaves them (queries still see them; retention drops the DEFAULT
-- partition once all its rows are past the retention).
-- Between steps 1 and 3 a row outside [lo, hi) routed to the DEFAULT partition
-- would be refused: only a row older than every partition (the range retention
-- dropped), or more than a day in the future, could be.
CREATE FUNCTION idv.history_repair_default(p_table text, OUT action text, OUT again boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    h       idv.history_tables := idv.history_base(p_table);
    v_def   text;
    v_fence text;
    v_min   timestamptz;
    v_max   timestamptz;
    v_lo    timestamptz;
    v_hi    timestamptz;
    v_valid boolean;
    v_name  text;
BEGIN
    again := false;
    SELECT p.partition_name INTO v_def FROM idv.history_partitions(p_table) p WHERE p.is_default;
    IF v_def IS NULL THEN
        RETURN;
    END IF;
    v_fence := v_def || '_fence';
    SELECT c.convalidated INTO v_valid FROM pg_constraint c
    WHERE c.conrelid = format('idv.%I', v_def)::regclass AND c.conname = v_fence;

    IF h.fence_from IS NULL THEN
        IF v_valid IS NOT NULL THEN  -- a fence left by an interrupted repair
            EXECUTE format('ALTER TABLE idv.%I DROP CONSTRAINT %I', v_def, v_fence);
        END IF;
        EXECUTE format('SELECT min(%1$I), max(%1$I) FROM idv.%2$I', h.key_column, v_def)
            INTO v_min, v_max;
        IF v_min IS NULL THEN
            RETURN;
        END IF;
        SELECT coalesce(max(p.range_to), '-infinity') INTO v_lo
        FROM idv.history_partitions(p_table) p WHERE NOT p.is_default AND p.range_to <= v_min;
        SELECT min(p.range_from) INTO v_hi
        FROM idv.history_partitions(p_table) p WHERE NOT p.is_default AND p.range_from > v_max;
        IF v_hi IS NULL THEN
            v_hi := date_trunc('month', greatest(v_max, now() + interval '1 day'))
                    + interval '1 month';
        END IF;
        IF EXISTS (SELECT 1 FROM idv.history_partitions(p_table) p
                   WHERE NOT p.is_default AND p.range_from < v_hi AND p.range_to > v_lo) THEN
            action := format('default partition idv.%s holds rows from %s to %s, on both sides'
                             ' of other partitions: left where they are', v_def, v_min, v_max);
            RETURN;
        END IF;
        EXECUTE format('ALTER TABLE idv.%I ADD CONSTRAINT %I CHECK (%I >= %L AND %I < %L)'
                       ' NOT VALID', v_def, v_fence, h.key_column, v_lo, h.key_column, v_hi);
        UPDATE idv.history_tables SET fence_from = v_lo, fence_to = v_hi
        WHERE table_name = h.table_name;
        action := format('default partition idv.%s holds rows from %s to %s: fenced to [%s, %s)',
                         v_def, v_min, v_max, v_lo, v_hi);
        again := true;
        RETURN;
    END IF;

    again := true;
    IF v_valid IS NULL THEN  -- the fence was removed by hand: start again
        UPDATE idv.history_tables SET fence_from = NULL, fence_to = NULL
        WHERE table_name = h.table_name;
        action := format('default partition idv.%s: fence gone, repair restarted', v_def);
        RETURN;
    END IF;
    IF NOT v_valid THEN
        BEGIN
            EXECUTE format('ALTER TABLE idv.%I VALIDATE CONSTRAINT %I', v_def, v_fence);
        EXCEPTION WHEN check_violation THEN
            EXECUTE format('ALTER TABLE idv.%I DROP CONSTRAINT %I', v_def, v_fence);
            UPDATE idv.history_tables SET fence_from = NULL, fence_to = NULL
            WHERE table_name = h.table_name;
            action := format('default partition idv.%s: a row outside the fence, repair'
                             ' restarted', v_def);
            RETURN;
        END;
        action := format('default partition idv.%s: fence validated', v_def);
        RETURN;
    END IF;

    -- The swap. DETACH takes ACCESS EXCLUSIVE on the parent: catalog work only.
    v_name := idv.history_partition_name(p_table, h.fence_from);
    EXECUTE format('ALTER TABLE idv.%I DETACH PARTITION idv.%I', p_table, v_def);
    EXECUTE format('ALTER TABLE idv.%I RENAME TO %I', v_def, v_name);
    EXECUTE format('ALTER TABLE idv.%I RENAME CONSTRAINT %I TO %I', v_name, v_fence,
                   v_name || '_bound');
    EXECUTE format('ALTER TRIGGER %I ON idv.%I RENAME TO %I', v_def || '_no_truncate', v_name,
                   v_name || '_no_truncate');
    EXECUTE format('CREATE TABLE idv.%I PARTITION OF idv.%I DEFAULT', v_def, p_table);
    EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON idv.%I'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION idv.forbid_change()',
                   v_def || '_no_truncate', v_def);
    EXECUTE format('ALTER TABLE idv.%I ATTACH PARTITION idv.%I FOR VALUES FROM (%L) TO (%L)',
                   p_table, v_name, h.fence_from, h.fence_to);
    UPDATE idv.history_tables SET fence_from = NULL, fence_to = NULL
    WHERE table_name = h.table_name;
    action := format('default partition of idv.%s became partition idv.%s [%s, %s)', p_table,
                     v_name, h.fence_from, h.fence_to);
    again := false;
END
$$;

-- ---- retention ------------------------------------------------------------------

-- Transactions whose history must stay: still open (initializing, initiated,
-- callback_received: a callback_received one waits for its confirmation), or
-- named by a work item not done (including one given up: an operator may
-- still retry it). Only those created before p_before (a partition's upper
-- bound plus a day): a transaction's rows are never older than the
-- transaction. Both sets come from small partial indexes.
CREATE FUNCTION idv.history_live_transactions(p_before timestamptz)
RETURNS TABLE (id bigint, transaction_id text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.id, t.transaction_id FROM idv.transactions t
    WHERE t.status IN ('initializing', 'initiated', 'callback_received')
      AND t.initiated_at < p_before
    UNION
    SELECT t.id, t.transaction_id FROM idv.work_queue q JOIN idv.transactions t ON t.id = q.tx
    WHERE q.done_at IS NULL AND t.initiated_at < p_before;
$$;

-- The partitions of p_table (by name) entirely older than now() - p_keep,
-- oldest first; the DEFAULT partition too when it holds rows and all of them
-- are that old.
CREATE FUNCTION idv.history_expired_partitions(p_table text, p_keep interval)
RETURNS SETOF text
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    h     idv.history_tables := idv.history_base(p_table);
    v_def text;
    v_max timestamptz;
BEGIN
    IF p_keep < interval '1 day' THEN
        RAISE EXCEPTION 'retention of idv.%: % is less than a day', p_table, p_keep
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY SELECT p.partition_name FROM idv.history_partitions(p_table) p
                 WHERE NOT p.is_default AND p.range_to <= now() - p_keep
                 ORDER BY p.range_from;
    SELECT p.partition_name INTO v_def FROM idv.history_partitions(p_table) p WHERE p.is_default;
    IF v_def IS NOT NULL THEN
        EXECUTE format('SELECT max(%I) FROM idv.%I', h.key_column, v_def) INTO v_max;
        IF v_max < now() - p_keep THEN
            RETURN NEXT v_def;
        END IF;
    END IF;
END
$$;

-- Drops one partition of p_table that is entirely older than now() - p_keep,
-- unless a row in it belongs to a live transaction (see
-- history_live_transactions): then it is kept, and the answer names them.
-- Whole partitions only: rows are never deleted. The DEFAULT partition is
-- dropped and made again, empty, in the same transaction.
-- Locks, both taken with the caller's lock_timeout: SHARE on idv.transactions
-- (no status changes while the live set is read, so no transaction becomes
-- live again behind the check: callbacks wait for the few milliseconds of the
-- check) and ACCESS EXCLUSIVE on the history table (DROP of a partition needs
-- it: catalog work only).
-- Records the drop in idv.history_drops; returns what it did.
CREATE FUNCTION idv.history_drop_partition(p_table text, p_partition text, p_keep interval)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    h       idv.history_tables := idv.history_base(p_table);
    p       record;
    v_cut   timestamptz := now() - p_keep;
    v_from  timestamptz;
    v_to    timestamptz;
    v_live  text[];
    v_rows  bigint;
    v_fx    xid8;
    v_fi    bigint;
    v_lx    xid8;
    v_li    bigint;
BEGIN
    IF p_table <> h.table_name THEN
        RAISE EXCEPTION 'idv.%: retention applies to the partitioned tables only', p_table
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_partition NOT IN (SELECT idv.history_expired_partitions(p_table, p_keep)) THEN
        RETURN format('idv.%s: not a partition past the retention of idv.%s, kept', p_partition,
                      p_table);
    END IF;
    SELECT * INTO p FROM idv.history_partitions(p_table) x WHERE x.partition_name = p_partition;
    -- Counted before the locks: nobody writes into a range this old (a late
    -- row could still come: the count is as of just before the drop).
    EXECUTE format('SELECT count(*) FROM idv.%I', p_partition) INTO v_rows;
    LOCK TABLE idv.transactions IN SHARE MODE;
    EXECUTE format('LOCK TABLE idv.%I IN ACCESS EXCLUSIVE MODE', p_table);
    IF p.is_default THEN
        EXECUTE format('SELECT min(%1$I), max(%1$I) FROM idv.%2$I', h.key_column, p_partition)
            INTO v_from, v_to;
        IF v_to IS NULL OR v_to >= v_cut THEN
            RETURN format('idv.%s: no longer past the retention, kept', p_partition);
        END IF;
    ELSE
        v_from := p.range_from;
        v_to := p.range_to;
    END IF;

    -- Which live transactions have a row here: a probe of the partition's
    -- index per live transaction created before the partition's end.
    IF h.link_column = 'transaction_id' THEN
        EXECUTE format('SELECT array_agg(l.transaction_id ORDER BY l.transaction_id)'
                       ' FROM idv.history_live_transactions($1) l'
                       ' WHERE EXISTS (SELECT 1 FROM idv.%I x'
                       '               WHERE x.transaction_id = l.transaction_id)', p_partition)
            INTO v_live USING v_to + interval '1 day';
    ELSE
        EXECUTE format('SELECT array_agg(coalesce(l.transaction_id, ''(id '' || l.id || '')'')'
                       '                 ORDER BY l.id)'
                       ' FROM idv.history_live_transactions($1) l'
                       ' WHERE EXISTS (SELECT 1 FROM idv.%I x WHERE x.tx = l.id)', p_partition)
            INTO v_live USING v_to + interval '1 day';
    END IF;
    IF v_live IS NOT NULL THEN
        RETURN format('idv.%s kept: it holds rows of %s live transaction(s) (%s)', p_partition,
                      cardinality(v_live), array_to_string(v_live[1:5], ', ')
                      || CASE WHEN cardinality(v_live) > 5 THEN ', ...' ELSE '' END);
    END IF;

    IF h.table_name = 'transaction_events' THEN
        EXECUTE format('SELECT xid, id FROM idv.%I ORDER BY xid, id LIMIT 1', p_partition)
            INTO v_fx, v_fi;
        EXECUTE format('SELECT xid, id FROM idv.%I ORDER BY xid DESC, id DESC LIMIT 1',
                       p_partition) INTO v_lx, v_li;
    END IF;
    EXECUTE format('DROP TABLE idv.%I', p_partition);
    IF p.is_default THEN
        EXECUTE format('CREATE TABLE idv.%I PARTITION OF idv.%I DEFAULT', p_partition, p_table);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON idv.%I'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION idv.forbid_change()',
                       p_partition || '_no_truncate', p_partition);
    END IF;
    INSERT INTO idv.history_drops (table_name, partition_name, range_from, range_to, row_count,
                                   first_xid, first_id, last_xid, last_id)
    VALUES (p_table, p_partition, v_from, v_to, v_rows, v_fx, v_fi, v_lx, v_li);
    RETURN format('dropped partition idv.%s [%s, %s), %s rows', p_partition, v_from, v_to,
                  v_rows);
END
$$;

-- For a consumer of idv.events_after: the drops that took events after its
-- position (xid, id). None: it missed nothing to retention.
CREATE FUNCTION idv.events_dropped_after(p_xid xid8, p_id bigint)
RETURNS SETOF idv.history_drops
LANGUAGE sql STABLE
AS $$
    SELECT d.* FROM idv.history_drops d
    WHERE d.table_name = 'transaction_events' AND (d.last_xid, d.last_id) > (p_xid, p_id)
    ORDER BY d.id;
$$;

-- ---- the partitioned tables -------------------------------------------------------

-- Makes idv.<p_table>_new, the partitioned successor of a history table: the
-- same columns in the same order with their defaults, identity, NOT NULL and
-- CHECK constraints, indexes (named <index>_new until the swap; a primary key
-- gains the partition key, as a unique index of a partitioned table must
-- include it: the identity keeps id unique), foreign keys and triggers. Read
-- from the catalog, so that it is whatever the earlier migrations made of the
-- table. Privileges follow at the swap.
CREATE FUNCTION idv.history_clone(p_table text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    h     idv.history_tables := idv.history_base(p_table);
    v_old regclass := format('idv.%I', p_table)::regclass;
    v_new text := p_table || '_new';
    r     record;
BEGIN
    EXECUTE format('CREATE TABLE idv.%I (LIKE idv.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS'
                   ' INCLUDING IDENTITY INCLUDING STORAGE INCLUDING COMMENTS)'
                   ' PARTITION BY RANGE (%I)', v_new, p_table, h.key_column);
    FOR r IN SELECT c.relname, i.indisprimary, i.indisunique, i.indkey,
                    pg_get_indexdef(i.indexrelid) AS def
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = v_old ORDER BY c.relname LOOP
        IF length(r.relname) > 59 THEN
            RAISE EXCEPTION 'index name % is too long to clone', r.relname;
        END IF;
        IF r.indisprimary THEN
            EXECUTE format('ALTER TABLE idv.%I ADD CONSTRAINT %I PRIMARY KEY (%s)', v_new,
                           r.relname || '_new',
                           (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.o)
                            FROM unnest(r.indkey::int2[]) WITH ORDINALITY k (n, o)
                            JOIN pg_attribute a ON a.attrelid = v_old AND a.attnum = k.n)
                           || CASE WHEN h.key_column = ANY (
                                       SELECT a.attname FROM unnest(r.indkey::int2[]) k (n)
                                       JOIN pg_attribute a ON a.attrelid = v_old
                                                          AND a.attnum = k.n)
                                   THEN '' ELSE ', ' || quote_ident(h.key_column) END);
        ELSIF r.indisunique THEN
            RAISE EXCEPTION 'unique index % of idv.% cannot be partitioned by %', r.relname,
                            p_table, h.key_column;
        ELSE
            EXECUTE regexp_replace(r.def, '^CREATE INDEX \S+ ON (ONLY )?\S+ ',
                                   format('CREATE INDEX %I ON idv.%I ', r.relname || '_new',
                                          v_new));
        END IF;
    END LOOP;
    FOR r IN SELECT c.conname, pg_get_constraintdef(c.oid) AS def FROM pg_constraint c
             WHERE c.conrelid = v_old AND c.contype = 'f' LOOP
        EXECUTE format('ALTER TABLE idv.%I ADD CONSTRAINT %I %s', v_new, r.conname, r.def);
    END LOOP;
    FOR r IN SELECT t.tgname, pg_get_triggerdef(t.oid) AS def FROM pg_trigger t
             WHERE t.tgrelid = v_old AND NOT t.tgisinternal LOOP
        EXECUTE regexp_replace(r.def, ' ON \S+ ', format(' ON idv.%I ', v_new));
    END LOOP;
    -- Append-only, whoever asks: the parent's row triggers are cloned onto
    -- every partition, TRUNCATE triggers are per table (history_add_partition
    -- adds one to each partition). check_results had no TRUNCATE guard.
    EXECUTE format('CREATE OR REPLACE TRIGGER %I BEFORE TRUNCATE ON idv.%I'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION idv.forbid_change()',
                   p_table || '_no_truncate', v_new);
END
$$;

SELECT idv.history_clone(t)
FROM unnest(ARRAY['callback_events', 'transaction_events', 'check_results']) t;

-- A partition for every month from the oldest row of the old table to two
-- months ahead, and a DEFAULT partition each.
SELECT idv.history_make_partitions(h.table_name || '_new', least(o.oldest, now()),
                                   now() + interval '2 months')
FROM idv.history_tables h JOIN history_oldest o USING (table_name);

-- ---- the move of the existing rows ----------------------------------------------

-- Where the move of each table stands (see idv.history_migrate_step).
CREATE TABLE idv.history_migration (
    table_name  text PRIMARY KEY REFERENCES idv.history_tables,
    phase       text NOT NULL CHECK (phase IN ('copy', 'swap', 'drop', 'done')),
    last_id     bigint NOT NULL,  -- rows up to this id existed before the copy trigger
    blocks      bigint NOT NULL,  -- ... and lie in the blocks below this one
    next_block  bigint NOT NULL DEFAULT 0,
    total       bigint,           -- rows to move (counted by the first step)
    moved       bigint NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL DEFAULT now(),
    swapped_at  timestamptz,
    swap_ms     double precision  -- how long the swap held its lock
);

-- Every row inserted into an old table from now on is inserted into the new
-- one too, in the same transaction (one statement per statement); the rows
-- that were there before are moved by history_migrate_step. With the owner's
-- rights: whoever inserts into the old table needs no right on the new one.
CREATE FUNCTION idv.history_copy_callback_events() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO idv.callback_events_new OVERRIDING SYSTEM VALUE SELECT * FROM new_rows;
    RETURN NULL;
END
$$;
CREATE FUNCTION idv.history_copy_transaction_events() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO idv.transaction_events_new OVERRIDING SYSTEM VALUE SELECT * FROM new_rows;
    RETURN NULL;
END
$$;
CREATE FUNCTION idv.history_copy_check_results() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO idv.check_results_new OVERRIDING SYSTEM VALUE SELECT * FROM new_rows;
    RETURN NULL;
END
$$;
-- The highest id the identity sequence of a table (idv.x) has handed out, 0
-- when none.
CREATE FUNCTION idv.history_last_id(p_table text) RETURNS bigint
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_last   bigint;
    v_called boolean;
BEGIN
    EXECUTE format('SELECT last_value, is_called FROM %s', pg_get_serial_sequence(p_table, 'id'))
        INTO v_last, v_called;
    RETURN CASE WHEN v_called THEN v_last ELSE v_last - 1 END;
END
$$;

-- Moves the rows of one table one step (each call is its own transaction):
--  copy: the rows of the next p_blocks heap blocks of the old table (a TID
--        range scan: no index needed) whose id is at most last_id, into the
--        new table (partitions made as needed); the first call counts them;
--  swap: in one transaction, under ACCESS EXCLUSIVE on the old table (the
--        caller sets lock_timeout and retries): the copy trigger goes, the old
--        table and its indexes are renamed away, the new one takes the names,
--        the privileges and the sequence position of the old one;
--  drop: the old table is dropped.
-- Returns the phase it leaves the table in and the rows moved of the total.
CREATE FUNCTION idv.history_migrate_step(p_table text, p_blocks integer,
                                         OUT phase text, OUT moved bigint, OUT total bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    h      idv.history_tables := idv.history_base(p_table);
    m      idv.history_migration;
    v_old  text := h.table_name || '_unpartitioned';
    v_new  text := h.table_name || '_new';
    v_to   bigint;
    v_min  timestamptz;
    v_max  timestamptz;
    v_n    bigint;
    v_t0   timestamptz;
    v_cols text;
    r      record;
BEGIN
    SELECT * INTO m FROM idv.history_migration x WHERE x.table_name = h.table_name FOR UPDATE;
    IF NOT FOUND THEN
        phase := 'done';
        RETURN;
    END IF;

    IF m.phase = 'copy' AND m.total IS NULL THEN
        EXECUTE format('SELECT count(*) FROM idv.%I WHERE ctid < ''(%s,0)''::tid AND id <= $1',
                       h.table_name, m.blocks) INTO v_n USING m.last_id;
        UPDATE idv.history_migration x SET total = v_n WHERE x.table_name = h.table_name
        RETURNING * INTO m;
    ELSIF m.phase = 'copy' THEN
        v_to := least(m.next_block + p_blocks, m.blocks);
        EXECUTE format('SELECT min(%1$I), max(%1$I) FROM idv.%2$I'
                       ' WHERE ctid >= ''(%3$s,0)''::tid AND ctid < ''(%4$s,0)''::tid'
                       ' AND id <= $1', h.key_column, h.table_name, m.next_block, v_to)
            INTO v_min, v_max USING m.last_id;
        IF v_min IS NOT NULL THEN
            PERFORM idv.history_make_partitions(v_new, v_min, v_max + interval '1 microsecond');
            SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO v_cols
            FROM pg_attribute a
            WHERE a.attrelid = format('idv.%I', v_new)::regclass AND a.attnum > 0
              AND NOT a.attisdropped;
            EXECUTE format('INSERT INTO idv.%1$I (%2$s) OVERRIDING SYSTEM VALUE'
                           ' SELECT %2$s FROM idv.%3$I'
                           ' WHERE ctid >= ''(%4$s,0)''::tid AND ctid < ''(%5$s,0)''::tid'
                           ' AND id <= $1', v_new, v_cols, h.table_name, m.next_block, v_to)
                USING m.last_id;
            GET DIAGNOSTICS v_n = ROW_COUNT;
        ELSE
            v_n := 0;
        END IF;
        UPDATE idv.history_migration x
        SET next_block = v_to, moved = x.moved + v_n,
            phase = CASE WHEN v_to >= x.blocks THEN 'swap' ELSE 'copy' END
        WHERE x.table_name = h.table_name
        RETURNING * INTO m;
    ELSIF m.phase = 'swap' THEN
        v_t0 := clock_timestamp();
        EXECUTE format('LOCK TABLE idv.%I, idv.%I IN ACCESS EXCLUSIVE MODE', h.table_name, v_new);
        -- Views would keep pointing at the old table: there must be none.
        FOR r IN SELECT DISTINCT v.oid::regclass AS v
                 FROM pg_depend d JOIN pg_rewrite w ON w.oid = d.objid
                 JOIN pg_class v ON v.oid = w.ev_class
                 WHERE d.refobjid = format('idv.%I', h.table_name)::regclass
                   AND v.oid <> d.refobjid LOOP
            RAISE EXCEPTION 'view % depends on idv.%: cannot swap', r.v, h.table_name;
        END LOOP;
        EXECUTE format('DROP TRIGGER %I ON idv.%I', h.table_name || '_copy_to_new', h.table_name);
        -- The old table and everything named after it step aside.
        EXECUTE format('ALTER TABLE idv.%I RENAME TO %I', h.table_name, v_old);
        FOR r IN SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                 WHERE i.indrelid = format('idv.%I', v_old)::regclass LOOP
            EXECUTE format('ALTER INDEX idv.%I RENAME TO %I', r.relname,
                           left(r.relname, 40) || '_unpartitioned');
        END LOOP;
        EXECUTE format('ALTER SEQUENCE %s RENAME TO %I',
                       pg_get_serial_sequence(format('idv.%I', v_old), 'id'),
                       h.table_name || '_id_seq_unpartitioned');
        -- The new table takes the names.
        EXECUTE format('ALTER TABLE idv.%I RENAME TO %I', v_new, h.table_name);
        FOR r IN SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                 WHERE i.indrelid = format('idv.%I', h.table_name)::regclass
                   AND c.relname LIKE '%\_new' LOOP
            EXECUTE format('ALTER INDEX idv.%I RENAME TO %I', r.relname,
                           left(r.relname, length(r.relname) - 4));
        END LOOP;
        EXECUTE format('ALTER SEQUENCE %s RENAME TO %I',
                       pg_get_serial_sequence(format('idv.%I', h.table_name), 'id'),
                       h.table_name || '_id_seq');
        -- Ids go on from where the old table's stopped.
        PERFORM setval(pg_get_serial_sequence(format('idv.%I', h.table_name), 'id'),
                       greatest(idv.history_last_id(format('idv.%I', v_old)), 1),
                       idv.history_last_id(format('idv.%I', v_old)) > 0);
        -- The privileges of the old table, table and column level, and no
        -- other.
        FOR r IN SELECT DISTINCT a.grantee FROM pg_class c, aclexplode(c.relacl) a
                 WHERE c.oid = format('idv.%I', h.table_name)::regclass
                   AND a.grantee <> c.relowner LOOP
            EXECUTE format('REVOKE ALL ON idv.%I FROM %s', h.table_name,
                           CASE WHEN r.grantee = 0 THEN 'PUBLIC'
                                ELSE quote_ident(pg_get_userbyid(r.grantee)) END);
        END LOOP;
        FOR r IN SELECT a.grantee, a.privilege_type
                 FROM pg_class c, aclexplode(c.relacl) a
                 WHERE c.oid = format('idv.%I', v_old)::regclass AND a.grantee <> c.relowner
                   AND a.grantee <> 0 LOOP
            EXECUTE format('GRANT %s ON idv.%I TO %I', r.privilege_type, h.table_name,
                           pg_get_userbyid(r.grantee));
        END LOOP;
        FOR r IN SELECT at.attname, a.grantee, a.privilege_type
                 FROM pg_attribute at, aclexplode(at.attacl) a
                 WHERE at.attrelid = format('idv.%I', v_old)::regclass AND at.attacl IS NOT NULL
                   AND a.grantee <> 0 LOOP
            EXECUTE format('GRANT %s (%I) ON idv.%I TO %I', r.privilege_type, r.attname,
                           h.table_name, pg_get_userbyid(r.grantee));
        END LOOP;
        IF h.table_name = 'transaction_events' THEN
            -- Its result type was the old table's row type.
            DROP FUNCTION idv.events_after(xid8, bigint, integer);
            CREATE FUNCTION idv.events_after(p_xid xid8, p_id bigint, p_limit integer DEFAULT 1000)
            RETURNS SETOF idv.transaction_events
            LANGUAGE sql STABLE AS $f$
                SELECT e.* FROM idv.transaction_events e
                WHERE (e.xid, e.id) > (p_xid, p_id)
                  AND e.xid < pg_snapshot_xmin(pg_current_snapshot())
                ORDER BY e.xid, e.id
                LIMIT p_limit;
            $f$;
            REVOKE ALL ON FUNCTION idv.events_after(xid8, bigint, integer) FROM PUBLIC;
            GRANT EXECUTE ON FUNCTION idv.events_after(xid8, bigint, integer)
                TO idv_daemon, idv_reader;
        END IF;
        -- Nothing else may still use the old row type.
        FOR r IN SELECT d.objid::regprocedure AS f FROM pg_depend d
                 WHERE d.classid = 'pg_proc'::regclass
                   AND d.refobjid = (SELECT c.reltype FROM pg_class c
                                     WHERE c.oid = format('idv.%I', v_old)::regclass) LOOP
            RAISE EXCEPTION 'function % uses the row type of idv.%: cannot swap', r.f,
                            h.table_name;
        END LOOP;
        UPDATE idv.history_migration x
        SET phase = 'drop', swapped_at = now(),
            swap_ms = extract(epoch FROM clock_timestamp() - v_t0) * 1000
        WHERE x.table_name = h.table_name
        RETURNING * INTO m;
    ELSIF m.phase = 'drop' THEN
        EXECUTE format('DROP TABLE idv.%I', v_old);
        UPDATE idv.history_migration x SET phase = 'done' WHERE x.table_name = h.table_name
        RETURNING * INTO m;
    END IF;
    phase := m.phase;
    moved := m.moved;
    total := m.total;
END
$$;

-- Last, in this transaction: the copy triggers. CREATE TRIGGER takes SHARE ROW
-- EXCLUSIVE on each old table, which waits for the inserts in flight and holds
-- back new ones until this transaction commits (milliseconds; migrate retries
-- when lock_timeout passes). With the lock held, every row up to the current
-- sequence value is committed, and every later row will pass the trigger:
-- last_id and blocks delimit what history_migrate_step moves.
LOCK TABLE idv.callback_events, idv.transaction_events, idv.check_results
    IN SHARE ROW EXCLUSIVE MODE;
CREATE TRIGGER callback_events_copy_to_new AFTER INSERT ON idv.callback_events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION idv.history_copy_callback_events();
CREATE TRIGGER transaction_events_copy_to_new AFTER INSERT ON idv.transaction_events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION idv.history_copy_transaction_events();
CREATE TRIGGER check_results_copy_to_new AFTER INSERT ON idv.check_results
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION idv.history_copy_check_results();
INSERT INTO idv.history_migration (table_name, phase, last_id, blocks)
SELECT t, 'copy', idv.history_last_id('idv.' || t),
       pg_relation_size(('idv.' || t)::regclass) / current_setting('block_size')::bigint
FROM unnest(ARRAY['callback_events', 'transaction_events', 'check_results']) t;

-- ---- privileges -------------------------------------------------------------------

REVOKE ALL ON idv.history_tables, idv.history_drops, idv.history_migration FROM PUBLIC;
REVOKE ALL ON FUNCTION idv.history_partitions(text), idv.history_base(text),
    idv.history_partition_name(text, timestamptz),
    idv.history_add_partition(text, timestamptz, timestamptz),
    idv.history_make_partitions(text, timestamptz, timestamptz),
    idv.history_repair_default(text), idv.history_live_transactions(timestamptz),
    idv.history_expired_partitions(text, interval),
    idv.history_drop_partition(text, text, interval),
    idv.events_dropped_after(xid8, bigint), idv.history_migrate_step(text, integer),
    idv.history_last_id(text),
    idv.history_copy_callback_events(), idv.history_copy_transaction_events(),
    idv.history_copy_check_results() FROM PUBLIC;
GRANT SELECT ON idv.history_tables, idv.history_drops TO idv_daemon, idv_reader,
    idv_maintainer;
GRANT EXECUTE ON FUNCTION idv.history_partitions(text), idv.history_base(text),
    idv.history_partition_name(text, timestamptz) TO idv_daemon, idv_reader, idv_maintainer;
GRANT EXECUTE ON FUNCTION idv.history_make_partitions(text, timestamptz, timestamptz),
    idv.history_repair_default(text) TO idv_daemon, idv_maintainer;
GRANT EXECUTE ON FUNCTION idv.history_expired_partitions(text, interval),
    idv.history_drop_partition(text, text, interval) TO idv_maintainer;
GRANT EXECUTE ON FUNCTION idv.events_dropped_after(xid8, bigint) TO idv_daemon, idv_reader;
