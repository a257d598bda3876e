-- idv-callbackd: partitioned history, partitions made ahead, retention.
--
-- The append-only history tables become range-partitioned, each by the key
-- its readers bound:
--  * idv.callback_events by received_at and idv.check_results by checked_at,
--    one partition per calendar month (UTC): audit queries bound by time read
--    only the months of their range;
--  * idv.transaction_events by xid, its ever-growing key, in ranges of about a
--    month of transaction ids: idv.events_after(xid, id) reads events from a
--    position on, so it reads only the partitions from that position's on
--    (one or two), however long the history. (By time it would have to read
--    every partition: an event written after the position may carry an older
--    `at`, the start of a long transaction, so no time bound is safe.)
-- Each also has a DEFAULT partition, which catches any row no partition covers:
-- a missing partition never makes an insert fail.
-- Native partitioning, no extension: see README, "PostgreSQL", for why not
-- pg_partman.
--
-- This file only prepares: it creates the partitioned tables beside the
-- existing ones (suffix _new) and triggers that copy every row inserted from
-- now on into them. `idv-callbackd migrate` then moves the existing rows in
-- batches (idv.history_migrate_step: short transactions, progress) and swaps
-- the tables in one short transaction per table (see daemon/migrate.c).
--
-- Who may do what:
--  * idv_daemon may make partitions ahead (idv.history_make_partitions) and
--    repair a DEFAULT partition that caught rows (idv.history_repair_default):
--    that creates tables and moves none of the rows;
--  * idv_maintainer (a new group role) may also drop partitions past a
--    retention (idv.history_drop_partition): only it can take history away.
-- Both run SECURITY DEFINER functions owned by the role that ran migrate (the
-- owner of the tables: only an owner may attach or drop a partition); neither
-- needs a superuser, and neither gets any other right on the tables.

-- Every lock below is waited for at most 2 s (migrate then retries the file):
-- a lock request that waits also holds back the requests queued behind it.
SET LOCAL lock_timeout = '2s';

-- First, before any lock that holds callbacks back (scans): what the existing
-- history spans, for the partitions to make. transaction_events: per month of
-- `at`, the lowest xid (ascending), the lower bounds of its xid partitions.
CREATE TEMPORARY TABLE history_oldest ON COMMIT DROP AS
SELECT 'callback_events' AS table_name, (SELECT min(received_at) FROM idv.callback_events) AS oldest
UNION ALL
SELECT 'check_results', (SELECT min(checked_at) FROM idv.check_results);
CREATE TEMPORARY TABLE history_xid_months ON COMMIT DROP AS
SELECT date_trunc('month', at AT TIME ZONE 'UTC') AS month, min(xid) AS lo, max(xid) AS hi
FROM idv.transaction_events GROUP BY 1;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'idv_maintainer') THEN
        CREATE ROLE idv_maintainer NOLOGIN;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA idv TO idv_maintainer;

-- ---- registry ------------------------------------------------------------------

-- The partitioned history tables: partition key and its type, the time of a
-- row (retention), how a row names its transaction (the retention's check of
-- live transactions: 'transaction_id' text or 'tx' = idv.transactions.id),
-- and the bounds of a repair of the DEFAULT partition in progress
-- (history_repair_default; text: a time or an xid).
CREATE TABLE idv.history_tables (
    table_name  text PRIMARY KEY,
    key_column  text NOT NULL,
    key_type    text NOT NULL CHECK (key_type IN ('timestamptz', 'xid8')),
    time_column text NOT NULL,
    link_column text NOT NULL CHECK (link_column IN ('transaction_id', 'tx')),
    fence_from  text,
    fence_to    text,
    CHECK ((fence_from IS NULL) = (fence_to IS NULL))
);
INSERT INTO idv.history_tables (table_name, key_column, key_type, time_column, link_column)
VALUES ('callback_events', 'received_at', 'timestamptz', 'received_at', 'transaction_id'),
       ('transaction_events', 'xid', 'xid8', 'at', 'tx'),
       ('check_results', 'checked_at', 'timestamptz', 'checked_at', 'tx');

-- xid partitions that no transaction can write into any more (every xid of
-- their range has ended), with the time of their newest row (NULL: empty):
-- what retention judges them by.
CREATE TABLE idv.history_closed (
    partition_name text PRIMARY KEY,
    table_name     text NOT NULL,
    newest_at      timestamptz,
    closed_at      timestamptz NOT NULL DEFAULT now()
);

-- Samples of the transaction id counter, one per maintain run: how many xids a
-- month takes, the size of the next xid partitions.
CREATE TABLE idv.history_xid_clock (
    sampled_at timestamptz PRIMARY KEY,
    next_xid   xid8 NOT NULL
);

-- Every partition retention dropped: what a consumer that fell behind lost.
-- The time span of its rows; for transaction_events also the (xid, id) range
-- of the events that went with it.
CREATE TABLE idv.history_drops (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name     text NOT NULL,
    partition_name text NOT NULL,
    range_from     timestamptz,
    range_to       timestamptz,
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
-- suffix _new before the swap) with their bounds: range_* for a table
-- partitioned by time (MINVALUE/MAXVALUE read as -infinity/infinity), xid_*
-- for one partitioned by xid; a DEFAULT partition has is_default and no bounds.
CREATE FUNCTION idv.history_partitions(p_table text)
RETURNS TABLE (partition_name text, is_default boolean, range_from timestamptz,
               range_to timestamptz, xid_from xid8, xid_to xid8)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
-- Bounds are printed in the session's time zone: fixed here, so that they read
-- back exactly.
SET TimeZone = 'UTC'
AS $$
    SELECT c.relname::text, b.bound = 'DEFAULT',
           CASE WHEN k.key_type = 'timestamptz' THEN
               CASE m[1] WHEN 'MINVALUE' THEN '-infinity' WHEN 'MAXVALUE' THEN 'infinity'
                         ELSE btrim(m[1], '''')::timestamptz END END,
           CASE WHEN k.key_type = 'timestamptz' THEN
               CASE m[2] WHEN 'MINVALUE' THEN '-infinity' WHEN 'MAXVALUE' THEN 'infinity'
                         ELSE btrim(m[2], '''')::timestamptz END END,
           CASE WHEN k.key_type = 'xid8' THEN btrim(m[1], '''')::xid8 END,
           CASE WHEN k.key_type = 'xid8' THEN btrim(m[2], '''')::xid8 END
    FROM idv.history_tables k
    JOIN pg_inherits i ON i.inhparent = to_regclass(format('idv.%I', p_table))
    JOIN pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS bound) b
    LEFT JOIN LATERAL regexp_match(b.bound, '^FOR VALUES FROM \((.*)\) TO \((.*)\)$') m ON true
    WHERE k.table_name = regexp_replace(p_table, '_new$', '')
    ORDER BY 2, 3, 5;
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

-- The name of the partition starting at p_from (a time or an xid, as text):
-- <table>_pYYYYMMDD (UTC) or <table>_pmin for the lowest by time,
-- <table>_x<xid> by xid.
CREATE FUNCTION idv.history_partition_name(p_table text, p_from text) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
    SELECT regexp_replace(p_table, '_new$', '')
           || CASE WHEN (idv.history_base(p_table)).key_type = 'xid8' THEN '_x' || p_from
                   WHEN p_from::timestamptz = '-infinity' THEN '_pmin'
                   ELSE '_p' || to_char(p_from::timestamptz, 'YYYYMMDD') END;
$$;

-- How many transaction ids a month takes here, from the samples of
-- idv.history_xid_clock (the oldest of the last 60 days that is at least a day
-- old); 1,000,000 before there is one. At least 10,000.
CREATE FUNCTION idv.history_xids_per_month() RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT greatest(10000, coalesce(
        (SELECT ((pg_snapshot_xmax(pg_current_snapshot())::text::numeric
                  - c.next_xid::text::numeric)
                 / greatest(extract(epoch FROM now() - c.sampled_at), 1) * 30 * 86400)::bigint
         FROM idv.history_xid_clock c
         WHERE c.sampled_at BETWEEN now() - interval '60 days' AND now() - interval '1 day'
         ORDER BY c.sampled_at LIMIT 1),
        1000000));
$$;

-- ---- partitions: making them ----------------------------------------------------

-- The TRUNCATE guard of a partition (or a partitioned table): TRUNCATE
-- triggers are per table, not inherited, and the append-only rule holds for
-- whoever asks.
CREATE FUNCTION idv.history_guard_truncate(p_name text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format('CREATE OR REPLACE TRIGGER %I BEFORE TRUNCATE ON idv.%I'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION idv.forbid_change()',
                   regexp_replace(p_name, '_new$', '') || '_no_truncate', p_name);
END
$$;

-- Creates the partition [p_from, p_to) of p_table (bounds as text: times or
-- xids) as a plain table first and then attaches it: ATTACH takes SHARE UPDATE
-- EXCLUSIVE on the parent, which does not stop inserts (CREATE TABLE ...
-- PARTITION OF would take ACCESS EXCLUSIVE). The DEFAULT partition is scanned
-- for rows of the new range (under ACCESS EXCLUSIVE on the DEFAULT partition
-- only): callers make sure it is empty or small, so that scan is instant.
-- Row triggers of the parent (append-only) are cloned by ATTACH; statement
-- triggers are not, so the TRUNCATE guard is added here.
CREATE FUNCTION idv.history_add_partition(p_table text, p_from text, p_to text)
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
    PERFORM idv.history_guard_truncate(v_name);
    RETURN format('created partition idv.%s [%s, %s)', v_name, p_from, p_to);
END
$$;

-- Creates the DEFAULT partition of p_table when it has none; returns what it
-- did, or NULL.
CREATE FUNCTION idv.history_ensure_default(p_table text) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_def text := regexp_replace(p_table, '_new$', '') || '_default';
BEGIN
    PERFORM idv.history_base(p_table);
    IF EXISTS (SELECT 1 FROM idv.history_partitions(p_table) p WHERE p.is_default) THEN
        RETURN NULL;
    END IF;
    EXECUTE format('CREATE TABLE idv.%I PARTITION OF idv.%I DEFAULT', v_def, p_table);
    PERFORM idv.history_guard_truncate(v_def);
    RETURN format('created partition idv.%s DEFAULT', v_def);
END
$$;

-- Whether the DEFAULT partition of p_table is too large to be scanned while
-- holding a lock that stops the inserts it catches (a few rows, say a late
-- audit row of a range retention dropped, are scanned in a blink).
CREATE FUNCTION idv.history_default_needs_repair(p_table text) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_def text;
    v_any boolean;
BEGIN
    SELECT p.partition_name INTO v_def FROM idv.history_partitions(p_table) p WHERE p.is_default;
    IF v_def IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM idv.%I)', v_def) INTO v_any;
    RETURN v_any AND pg_relation_size(format('idv.%I', v_def)::regclass) > 1024 * 1024;
END
$$;

-- Makes sure p_table has partitions ahead, and a DEFAULT partition:
--  * by time: a partition for every instant of [p_from, p_to), one per
--    calendar month (UTC), or the part of a month no partition covers yet;
--  * by xid: partitions of about a month of transaction ids each
--    (history_xids_per_month) up to the xid the counter should reach by p_to
--    at that pace. It also samples the counter, and notes which partitions
--    closed (all their xids ended) with the time of their newest row.
-- Past ranges are not filled in (rows of an uncovered past range are in the
-- DEFAULT partition; history_repair_default turns them into a partition).
-- Returns one line per thing done. Stops with 'repair needed' when the DEFAULT
-- partition holds more than a few rows: attaching would scan it while holding
-- a lock that stops the inserts it catches; the caller repairs it first.
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
    v_line text;
    v_m    timestamptz;
    v_a    timestamptz;
    v_b    timestamptz;
    v_next xid8;
    v_top  numeric;
    v_up   numeric;
    v_size bigint;
    r      record;
BEGIN
    v_line := idv.history_ensure_default(p_table);
    IF v_line IS NOT NULL THEN
        RETURN NEXT v_line;
    END IF;
    SELECT p.partition_name INTO v_def FROM idv.history_partitions(p_table) p WHERE p.is_default;

    IF h.key_type = 'xid8' THEN
        v_next := pg_snapshot_xmax(pg_current_snapshot());
        INSERT INTO idv.history_xid_clock (sampled_at, next_xid) VALUES (now(), v_next)
        ON CONFLICT DO NOTHING;
        DELETE FROM idv.history_xid_clock
        WHERE sampled_at < now() - interval '90 days'
          AND sampled_at < (SELECT max(sampled_at) FROM idv.history_xid_clock);
        -- Partitions every xid of which has ended: no row can come any more
        -- (but for the move of migrate, which writes old rows into the new
        -- table: not before the swap).
        FOR r IN SELECT p.partition_name FROM idv.history_partitions(p_table) p
                 WHERE NOT p.is_default AND p_table = h.table_name
                   AND p.xid_to <= pg_snapshot_xmin(pg_current_snapshot())
                   AND NOT EXISTS (SELECT 1 FROM idv.history_closed c
                                   WHERE c.partition_name = p.partition_name) LOOP
            EXECUTE format('INSERT INTO idv.history_closed (partition_name, table_name, newest_at)'
                           ' SELECT %L, %L, max(%I) FROM idv.%I', r.partition_name, h.table_name,
                           h.time_column, r.partition_name);
            RETURN NEXT format('partition idv.%s closed', r.partition_name);
        END LOOP;
        v_size := idv.history_xids_per_month();
        v_top := v_next::text::numeric
                 + v_size * greatest(extract(epoch FROM p_to - now()), 0) / (30 * 86400);
        SELECT coalesce(max(p.xid_to::text::numeric), 0) INTO v_up
        FROM idv.history_partitions(p_table) p WHERE NOT p.is_default;
        WHILE v_up <= v_top LOOP
            IF idv.history_default_needs_repair(p_table) THEN
                RETURN NEXT format('default partition idv.%s holds rows: repair needed', v_def);
                RETURN;
            END IF;
            BEGIN
                RETURN NEXT idv.history_add_partition(p_table, v_up::text, (v_up + v_size)::text);
            EXCEPTION WHEN check_violation THEN
                RETURN NEXT format('default partition idv.%s holds rows of [%s, %s): repair'
                                   ' needed', v_def, v_up, v_up + v_size);
                RETURN;
            END;
            v_up := v_up + v_size;
        END LOOP;
        RETURN;
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
            IF idv.history_default_needs_repair(p_table) THEN
                RETURN NEXT format('default partition idv.%s holds rows: repair needed', v_def);
                RETURN;
            END IF;
            BEGIN
                RETURN NEXT idv.history_add_partition(p_table, v_a::text, v_b::text);
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
--     partitions its rows are in and hi leaves room ahead (two days, or two
--     days of transaction ids, at least a million);
--  2. validate it: a scan under SHARE UPDATE EXCLUSIVE, which lets inserts go on;
--  3. swap, in one short transaction: detach the DEFAULT partition, make a
--     new empty one, attach the old one FOR VALUES FROM (lo) TO (hi) (the
--     validated fence proves the bound: no scan).
-- Returns what it did (NULL: nothing to repair) and whether another step
-- follows. When the rows are in more than one gap it cannot make one partition
-- of them: it says so and leaves them (queries still see them; retention drops
-- the DEFAULT partition once all its rows are past the retention).
-- While a fence stands, a row routed to the DEFAULT partition outside [lo, hi)
-- would be refused: only a row older than every partition (of a range
-- retention dropped) could be, or, should the repair stop half-way and no
-- maintain run for two days, new rows past hi. maintain runs the three steps
-- at once and takes a fence down when a step fails (history_repair_abort).
CREATE FUNCTION idv.history_repair_default(p_table text, OUT action text, OUT again boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    h       idv.history_tables := idv.history_base(p_table);
    v_xid   boolean := h.key_type = 'xid8';
    v_def   text;
    v_fence text;
    v_min   text;
    v_max   text;
    v_lo    text;
    v_hi    text;
    v_valid boolean;
    v_name  text;
    v_over  boolean;
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
        EXECUTE format('SELECT min(%1$I)::text, max(%1$I)::text FROM idv.%2$I', h.key_column,
                       v_def) INTO v_min, v_max;
        IF v_min IS NULL THEN
            RETURN;
        END IF;
        IF v_xid THEN
            SELECT coalesce(max(p.xid_to), '0')::text INTO v_lo
            FROM idv.history_partitions(p_table) p
            WHERE NOT p.is_default AND p.xid_to <= v_min::xid8;
            SELECT min(p.xid_from)::text INTO v_hi
            FROM idv.history_partitions(p_table) p
            WHERE NOT p.is_default AND p.xid_from > v_max::xid8;
            v_hi := coalesce(v_hi, (greatest(v_max::numeric + 1,
                pg_snapshot_xmax(pg_current_snapshot())::text::numeric
                + greatest(1000000, idv.history_xids_per_month() / 15)))::text);
            SELECT EXISTS (SELECT 1 FROM idv.history_partitions(p_table) p
                           WHERE NOT p.is_default AND p.xid_from < v_hi::xid8
                             AND p.xid_to > v_lo::xid8) INTO v_over;
        ELSE
            SELECT coalesce(max(p.range_to), '-infinity')::text INTO v_lo
            FROM idv.history_partitions(p_table) p
            WHERE NOT p.is_default AND p.range_to <= v_min::timestamptz;
            SELECT min(p.range_from)::text INTO v_hi
            FROM idv.history_partitions(p_table) p
            WHERE NOT p.is_default AND p.range_from > v_max::timestamptz;
            v_hi := coalesce(v_hi, (date_trunc('month', greatest(v_max::timestamptz,
                                                                 now() + interval '2 days'))
                                    + interval '1 month')::text);
            SELECT EXISTS (SELECT 1 FROM idv.history_partitions(p_table) p
                           WHERE NOT p.is_default AND p.range_from < v_hi::timestamptz
                             AND p.range_to > v_lo::timestamptz) INTO v_over;
        END IF;
        IF v_over THEN
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
    PERFORM idv.history_ensure_default(p_table);
    EXECUTE format('ALTER TABLE idv.%I ATTACH PARTITION idv.%I FOR VALUES FROM (%L) TO (%L)',
                   p_table, v_name, h.fence_from, h.fence_to);
    UPDATE idv.history_tables SET fence_from = NULL, fence_to = NULL
    WHERE table_name = h.table_name;
    action := format('default partition of idv.%s became partition idv.%s [%s, %s)', p_table,
                     v_name, h.fence_from, h.fence_to);
    again := false;
END
$$;

-- Takes down the fence of a repair that cannot go on (maintain calls it when a
-- repair step failed), so that no row is ever refused for it.
CREATE FUNCTION idv.history_repair_abort(p_table text) RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    h     idv.history_tables := idv.history_base(p_table);
    v_def text;
BEGIN
    SELECT p.partition_name INTO v_def FROM idv.history_partitions(p_table) p WHERE p.is_default;
    IF v_def IS NOT NULL THEN
        EXECUTE format('ALTER TABLE idv.%I DROP CONSTRAINT IF EXISTS %I', v_def,
                       v_def || '_fence');
    END IF;
    UPDATE idv.history_tables SET fence_from = NULL, fence_to = NULL
    WHERE table_name = h.table_name;
    RETURN format('repair of the default partition of idv.%s abandoned, fence removed', p_table);
END
$$;

-- ---- retention ------------------------------------------------------------------

-- Transactions whose history must stay: still open (initializing, initiated,
-- callback_received: a callback_received one waits for its confirmation), or
-- named by a work item not done (including one given up: an operator may
-- still retry it). Only those created before p_before (a partition's newest
-- time plus a day): a transaction's rows are never older than the
-- transaction. Read from small sets, never from all of idv.transactions (the
-- check runs while callbacks wait): the work items not done (a partial index;
-- every callback_received transaction has one, its confirmation) and the
-- sweeper's due list idv.sweep_due (sql/0005: a row for every transaction
-- initializing or initiated until the sweeper has dealt with it, then a work
-- item or a final status).
CREATE FUNCTION idv.history_live_transactions(p_before timestamptz)
RETURNS TABLE (id bigint, transaction_id text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.id, t.transaction_id FROM idv.sweep_due d JOIN idv.transactions t ON t.id = d.tx
    WHERE t.status IN ('initializing', 'initiated', 'callback_received')
      AND t.initiated_at < p_before
    UNION
    SELECT t.id, t.transaction_id FROM idv.work_queue q JOIN idv.transactions t ON t.id = q.tx
    WHERE q.done_at IS NULL AND t.initiated_at < p_before;
$$;

-- The partitions of p_table (by name) whose rows are all older than now() -
-- p_keep, oldest first: by time, those whose range ends by then; by xid, the
-- closed ones whose newest row is that old; and the DEFAULT partition when it
-- holds rows and all of them are that old.
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
    RETURN QUERY
        SELECT p.partition_name FROM idv.history_partitions(p_table) p
        LEFT JOIN idv.history_closed c ON c.partition_name = p.partition_name
        WHERE NOT p.is_default
          AND CASE WHEN h.key_type = 'xid8'
                   THEN c.partition_name IS NOT NULL
                        AND coalesce(c.newest_at, '-infinity') < now() - p_keep
                   ELSE p.range_to <= now() - p_keep END
        ORDER BY p.range_from, p.xid_from;
    SELECT p.partition_name INTO v_def FROM idv.history_partitions(p_table) p WHERE p.is_default;
    IF v_def IS NOT NULL THEN
        EXECUTE format('SELECT max(%I) FROM idv.%I', h.time_column, v_def) INTO v_max;
        IF v_max < now() - p_keep THEN
            RETURN NEXT v_def;
        END IF;
    END IF;
END
$$;

-- Drops one partition of p_table whose rows are all older than now() -
-- p_keep, unless a row in it belongs to a live transaction (see
-- history_live_transactions): then it is kept, and the answer names them.
-- Whole partitions only: rows are never deleted. The DEFAULT partition is
-- dropped and made again, empty, in the same transaction.
-- Locks, both taken with the caller's lock_timeout: SHARE on idv.transactions
-- (no status changes while the live set is read, so no transaction becomes
-- live again behind the check: callbacks wait for the milliseconds of the
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
    h      idv.history_tables := idv.history_base(p_table);
    p      record;
    v_from timestamptz;
    v_to   timestamptz;
    v_live text[];
    v_rows bigint;
    v_fx   xid8;
    v_fi   bigint;
    v_lx   xid8;
    v_li   bigint;
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
    EXECUTE format('SELECT count(*), min(%1$I), max(%1$I) FROM idv.%2$I', h.time_column,
                   p_partition) INTO v_rows, v_from, v_to;
    LOCK TABLE idv.transactions IN SHARE MODE;
    EXECUTE format('LOCK TABLE idv.%I IN ACCESS EXCLUSIVE MODE', p_table);
    IF p.is_default AND p_partition NOT IN (SELECT idv.history_expired_partitions(p_table,
                                                                                  p_keep)) THEN
        RETURN format('idv.%s: no longer past the retention, kept', p_partition);
    END IF;
    IF h.key_type = 'timestamptz' AND NOT p.is_default THEN
        v_from := p.range_from;
        v_to := p.range_to;
    END IF;

    -- Which live transactions have a row here: a probe of the partition's
    -- index per live transaction created before the partition's newest row.
    IF h.link_column = 'transaction_id' THEN
        EXECUTE format('SELECT array_agg(l.transaction_id ORDER BY l.transaction_id)'
                       ' FROM idv.history_live_transactions($1) l'
                       ' WHERE EXISTS (SELECT 1 FROM idv.%I x'
                       '               WHERE x.transaction_id = l.transaction_id)', p_partition)
            INTO v_live USING coalesce(v_to, now()) + interval '1 day';
    ELSE
        -- By transaction_id where the table has that index (transaction_events),
        -- else by tx (check_results); a live transaction without an id yet
        -- (initializing) counts when it is that old: kept, to be safe.
        EXECUTE format('SELECT array_agg(coalesce(l.transaction_id, ''(id '' || l.id || '')'')'
                       '                 ORDER BY l.id)'
                       ' FROM idv.history_live_transactions($1) l WHERE %s',
                       CASE WHEN h.table_name = 'transaction_events'
                            THEN format('CASE WHEN l.transaction_id IS NULL'
                                        ' THEN EXISTS (SELECT 1 FROM idv.%1$I)'
                                        ' ELSE EXISTS (SELECT 1 FROM idv.%1$I x'
                                        '              WHERE x.transaction_id = l.transaction_id)'
                                        ' END', p_partition)
                            ELSE format('EXISTS (SELECT 1 FROM idv.%I x WHERE x.tx = l.id)',
                                        p_partition) END)
            INTO v_live USING coalesce(v_to, now()) + interval '1 day';
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
    DELETE FROM idv.history_closed WHERE partition_name = p_partition;
    IF p.is_default THEN
        PERFORM idv.history_ensure_default(p_table);
    END IF;
    INSERT INTO idv.history_drops (table_name, partition_name, range_from, range_to, row_count,
                                   first_xid, first_id, last_xid, last_id)
    VALUES (p_table, p_partition, v_from, v_to, v_rows, v_fx, v_fi, v_lx, v_li);
    RETURN format('dropped partition idv.%s (rows from %s to %s), %s rows', p_partition,
                  coalesce(v_from::text, '-'), coalesce(v_to::text, '-'), v_rows);
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
    PERFORM idv.history_guard_truncate(v_new);
END
$$;

SELECT idv.history_clone(t)
FROM unnest(ARRAY['callback_events', 'transaction_events', 'check_results']) t;

-- By time: a partition for every month from the oldest row of the old table to
-- two months ahead, and a DEFAULT partition each.
SELECT idv.history_make_partitions(h.table_name || '_new', least(o.oldest, now()),
                                   now() + interval '2 months')
FROM idv.history_tables h JOIN history_oldest o USING (table_name);

-- By xid: the events of each past month (of `at`) in a partition of their own,
-- from its lowest xid to the next month's, the last one up to the xids of now;
-- then ranges of a month of xids ahead (the pace of the last month of the old
-- events when they tell it, else the default of history_xids_per_month).
DO $$
DECLARE
    r      record;
    v_prev numeric := 0;
    v_next numeric := pg_snapshot_xmax(pg_current_snapshot())::text::numeric;
    v_bnd  numeric[] := '{}';
BEGIN
    FOR r IN SELECT m.lo::text::numeric AS lo FROM history_xid_months m ORDER BY m.month LOOP
        IF r.lo > v_prev AND r.lo < v_next THEN
            v_bnd := v_bnd || r.lo;
            v_prev := r.lo;
        END IF;
    END LOOP;
    v_bnd := ARRAY[0::numeric] || v_bnd[2:] || v_next;
    FOR i IN 1 .. cardinality(v_bnd) - 1 LOOP
        PERFORM idv.history_add_partition('transaction_events_new', v_bnd[i]::text,
                                          v_bnd[i + 1]::text);
    END LOOP;
    -- The pace of the old events: the xids of their last thirty days.
    INSERT INTO idv.history_xid_clock (sampled_at, next_xid)
    SELECT now() - interval '30 days', min(e.xid)
    FROM idv.transaction_events e
    WHERE e.at > now() - interval '30 days'
    HAVING min(e.xid) IS NOT NULL AND max(e.at) > now() - interval '2 days'
       AND min(e.at) < now() - interval '28 days';
END
$$;
SELECT idv.history_make_partitions('transaction_events_new', now(), now() + interval '2 months');

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
    swap_ms     double precision, -- how long the swap held its lock
    trigger_ms  double precision  -- how long this file held the locks of the copy triggers
);

-- Every row inserted into an old table from now on is inserted into the new
-- one too, in the same transaction (one statement per statement); the rows
-- that were there before are moved by history_migrate_step. With the owner's
-- rights: whoever inserts into the old table needs no right on the new one.
CREATE FUNCTION idv.history_copy_to_new() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- The transition table is visible to EXECUTE too (same column order:
    -- the new table is a clone).
    EXECUTE format('INSERT INTO idv.%I OVERRIDING SYSTEM VALUE SELECT * FROM new_rows',
                   TG_TABLE_NAME || '_new');
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
--        new table (partitions by time made as needed); the first call counts
--        them;
--  swap: in one transaction, under ACCESS EXCLUSIVE on the old table (the
--        caller sets lock_timeout and retries): the copy trigger goes, the old
--        table and its indexes are renamed away, the new one takes the names,
--        the privileges and the sequence position of the old one, and the
--        views and functions that named the old table point at the new one;
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
    v_defs text[];
    v_fsig text[];
    v_fdef text[];
    v_fown text[];
    v_facl text[];
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
        IF h.key_type = 'timestamptz' THEN
            EXECUTE format('SELECT min(%1$I), max(%1$I) FROM idv.%2$I'
                           ' WHERE ctid >= ''(%3$s,0)''::tid AND ctid < ''(%4$s,0)''::tid'
                           ' AND id <= $1', h.key_column, h.table_name, m.next_block, v_to)
                INTO v_min, v_max USING m.last_id;
            IF v_min IS NOT NULL THEN
                PERFORM idv.history_make_partitions(v_new, v_min,
                                                    v_max + interval '1 microsecond');
            END IF;
        END IF;
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
        UPDATE idv.history_migration x
        SET next_block = v_to, moved = x.moved + v_n,
            phase = CASE WHEN v_to >= x.blocks THEN 'swap' ELSE 'copy' END
        WHERE x.table_name = h.table_name
        RETURNING * INTO m;
    ELSIF m.phase = 'swap' THEN
        v_t0 := clock_timestamp();
        EXECUTE format('LOCK TABLE idv.%I, idv.%I IN ACCESS EXCLUSIVE MODE', h.table_name, v_new);
        -- Views that read the old table (by its oid: idv.callback_results
        -- reads callback_events) are defined again once the new table has the
        -- name: their definitions, printed now, still name it.
        SELECT array_agg(format('CREATE OR REPLACE VIEW %s AS %s', v.oid::regclass,
                                pg_get_viewdef(v.oid)))
        INTO v_defs
        FROM (SELECT DISTINCT w.ev_class AS oid
              FROM pg_depend d JOIN pg_rewrite w ON w.oid = d.objid
              WHERE d.classid = 'pg_rewrite'::regclass
                AND d.refobjid = format('idv.%I', h.table_name)::regclass
                AND w.ev_class <> d.refobjid) v;
        -- Functions typed by the old table's row type (an argument or the
        -- result: idv.status_payload(idv.transaction_events), which the status
        -- trigger and idv.record_callback_batch call) are bound to that type's
        -- oid: they are dropped now and created again, with their owner and
        -- privileges, once the new table has the name. idv.events_after is
        -- written again below, with its partition bound.
        SELECT array_agg(f.sig ORDER BY f.oid), array_agg(f.def ORDER BY f.oid),
               array_agg(f.own ORDER BY f.oid), array_agg(f.acl ORDER BY f.oid)
        INTO v_fsig, v_fdef, v_fown, v_facl
        FROM (SELECT DISTINCT p.oid, p.oid::regprocedure::text AS sig,
                     pg_get_functiondef(p.oid) AS def, pg_get_userbyid(p.proowner) AS own,
                     coalesce(p.proacl::text, '') AS acl
              FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
              WHERE d.classid = 'pg_proc'::regclass
                AND d.refobjid = (SELECT c.reltype FROM pg_class c
                                  WHERE c.oid = format('idv.%I', h.table_name)::regclass)
                AND p.oid <> 'idv.events_after(xid8, bigint, integer)'::regprocedure) f;
        FOR i IN 1 .. coalesce(cardinality(v_fsig), 0) LOOP
            EXECUTE format('DROP FUNCTION %s', v_fsig[i]);
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
        FOR i IN 1 .. coalesce(cardinality(v_defs), 0) LOOP
            EXECUTE v_defs[i];
        END LOOP;
        FOR i IN 1 .. coalesce(cardinality(v_fsig), 0) LOOP
            EXECUTE v_fdef[i];  -- its signature's type name is now the new table's
            EXECUTE format('ALTER FUNCTION %s OWNER TO %I', v_fsig[i], v_fown[i]);
            EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', v_fsig[i]);
            FOR r IN SELECT a.grantee FROM aclexplode(nullif(v_facl[i], '')::aclitem[]) a
                     WHERE a.privilege_type = 'EXECUTE' LOOP
                EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s', v_fsig[i],
                               CASE WHEN r.grantee = 0 THEN 'PUBLIC'
                                    ELSE quote_ident(pg_get_userbyid(r.grantee)) END);
            END LOOP;
        END LOOP;
        -- PL/pgSQL functions that declare a variable of the row type (the
        -- status row trigger: `e idv.transaction_events`) keep the old type in
        -- every session that compiled them; written again unchanged, they are
        -- compiled again by every session at their next call.
        FOR r IN SELECT p.oid FROM pg_proc p
                 WHERE p.pronamespace = 'idv'::regnamespace
                   AND p.prolang = (SELECT l.oid FROM pg_language l WHERE l.lanname = 'plpgsql')
                   AND p.prosrc ~ format('\midv\.%s\s*(;|%%ROWTYPE)', h.table_name) LOOP
            EXECUTE pg_get_functiondef(r.oid);
        END LOOP;
        IF h.table_name = 'transaction_events' THEN
            -- Its result type was the old table's row type. The position's xid
            -- bound, implied by the row comparison, is written out: it is what
            -- prunes the partitions below the position.
            DROP FUNCTION idv.events_after(xid8, bigint, integer);
            CREATE FUNCTION idv.events_after(p_xid xid8, p_id bigint, p_limit integer DEFAULT 1000)
            RETURNS SETOF idv.transaction_events
            LANGUAGE sql STABLE AS $f$
                SELECT e.* FROM idv.transaction_events e
                WHERE (e.xid, e.id) > (p_xid, p_id) AND e.xid >= p_xid
                  AND e.xid < pg_snapshot_xmin(pg_current_snapshot())
                ORDER BY e.xid, e.id
                LIMIT p_limit;
            $f$;
            REVOKE ALL ON FUNCTION idv.events_after(xid8, bigint, integer) FROM PUBLIC;
            GRANT EXECUTE ON FUNCTION idv.events_after(xid8, bigint, integer)
                TO idv_daemon, idv_reader;
        END IF;
        -- Nothing else may still use the old table or its row type.
        FOR r IN SELECT d.classid::regclass AS c, d.objid FROM pg_depend d
                 WHERE d.refobjid IN (format('idv.%I', v_old)::regclass,
                                      (SELECT c.reltype FROM pg_class c
                                       WHERE c.oid = format('idv.%I', v_old)::regclass))
                   AND d.deptype = 'n' AND d.classid <> 'pg_class'::regclass
                   AND NOT (d.classid = 'pg_constraint'::regclass
                            AND EXISTS (SELECT 1 FROM pg_constraint x
                                        WHERE x.oid = d.objid
                                          AND x.conrelid = format('idv.%I', v_old)::regclass))
                   AND NOT (d.classid = 'pg_trigger'::regclass
                            AND EXISTS (SELECT 1 FROM pg_trigger x
                                        WHERE x.oid = d.objid
                                          AND x.tgrelid = format('idv.%I', v_old)::regclass))
                   AND NOT (d.classid = 'pg_rewrite'::regclass
                            AND EXISTS (SELECT 1 FROM pg_rewrite x
                                        WHERE x.oid = d.objid
                                          AND x.ev_class = format('idv.%I', v_old)::regclass))
                 LOOP
            RAISE EXCEPTION '% % still uses the old idv.%: cannot swap', r.c, r.objid,
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
CREATE TEMPORARY TABLE history_locked_at ON COMMIT DROP AS SELECT clock_timestamp() AS at;
CREATE TRIGGER callback_events_copy_to_new AFTER INSERT ON idv.callback_events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION idv.history_copy_to_new();
CREATE TRIGGER transaction_events_copy_to_new AFTER INSERT ON idv.transaction_events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION idv.history_copy_to_new();
CREATE TRIGGER check_results_copy_to_new AFTER INSERT ON idv.check_results
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION idv.history_copy_to_new();
INSERT INTO idv.history_migration (table_name, phase, last_id, blocks)
SELECT t, 'copy', idv.history_last_id('idv.' || t),
       pg_relation_size(('idv.' || t)::regclass) / current_setting('block_size')::bigint
FROM unnest(ARRAY['callback_events', 'transaction_events', 'check_results']) t;

-- ---- privileges -------------------------------------------------------------------

REVOKE ALL ON idv.history_tables, idv.history_closed, idv.history_xid_clock, idv.history_drops,
    idv.history_migration FROM PUBLIC;
REVOKE ALL ON FUNCTION idv.history_partitions(text), idv.history_base(text),
    idv.history_partition_name(text, text), idv.history_xids_per_month(),
    idv.history_add_partition(text, text, text), idv.history_ensure_default(text),
    idv.history_default_needs_repair(text),
    idv.history_make_partitions(text, timestamptz, timestamptz),
    idv.history_repair_default(text), idv.history_repair_abort(text),
    idv.history_live_transactions(timestamptz), idv.history_expired_partitions(text, interval),
    idv.history_drop_partition(text, text, interval), idv.events_dropped_after(xid8, bigint),
    idv.history_clone(text), idv.history_migrate_step(text, integer), idv.history_last_id(text),
    idv.history_guard_truncate(text),
    idv.history_copy_to_new() FROM PUBLIC;
GRANT SELECT ON idv.history_tables, idv.history_closed, idv.history_drops
    TO idv_daemon, idv_reader, idv_maintainer;
GRANT EXECUTE ON FUNCTION idv.history_partitions(text), idv.history_base(text)
    TO idv_daemon, idv_reader, idv_maintainer;
GRANT EXECUTE ON FUNCTION idv.history_make_partitions(text, timestamptz, timestamptz),
    idv.history_repair_default(text), idv.history_repair_abort(text)
    TO idv_daemon, idv_maintainer;
GRANT EXECUTE ON FUNCTION idv.history_expired_partitions(text, interval),
    idv.history_drop_partition(text, text, interval) TO idv_maintainer;
GRANT EXECUTE ON FUNCTION idv.events_dropped_after(xid8, bigint) TO idv_daemon, idv_reader;

-- The very last statement: how long the copy triggers' locks have been held
-- (until the commit, which follows at once).
UPDATE idv.history_migration
SET trigger_ms = extract(epoch FROM clock_timestamp() - (SELECT at FROM history_locked_at)) * 1000;
