-- Audit queries worth copying. Run them as a member of idv_reader.
--
-- The history tables are partitioned by month (idv.callback_events by
-- received_at, idv.transaction_events by at, idv.check_results by checked_at).
-- A query bounded by time on both sides reads only the partitions of its range
-- (EXPLAIN says "Subplans Removed"); one without a time bound reads every
-- partition: by index when it names a transaction, in full otherwise.

-- 1. Every callback a transaction received, in order, with who sent it.
--    (An index lookup in each partition.)
SELECT received_at, outcome, passed, sub_code, client_ip, instance
FROM idv.callback_events
WHERE transaction_id = :'tx'
ORDER BY id;

-- 2. Rejected callbacks by client address over the last day (token guessing?).
SELECT client_ip, count(*) AS rejected, min(received_at) AS first, max(received_at) AS last
FROM idv.callback_events
WHERE outcome = 'rejected' AND received_at > now() - interval '1 day' AND received_at <= now()
GROUP BY client_ip
ORDER BY rejected DESC
LIMIT 20;

-- 3. Transactions whose callbacks disagreed over the last 30 days: the
--    recorded result and the others. (Without the time bound: every partition.)
SELECT s.transaction_id, s.status, s.passed, s.sub_code, e.received_at,
       e.passed AS other_passed, e.sub_code AS other_sub_code, e.client_ip
FROM idv.callback_events e
JOIN idv.transaction_status s USING (transaction_id)
WHERE e.outcome = 'conflict'
  AND e.received_at > now() - interval '30 days' AND e.received_at <= now()
ORDER BY e.received_at DESC;

-- 4. The history of one transaction's status, as business workflows saw it.
--    (An index lookup in each partition.)
SELECT id, at, status, previous_status, passed, sub_code, confirmed
FROM idv.transaction_events
WHERE transaction_id = :'tx'
ORDER BY id;

-- 5. Outcomes per hour and instance over the last day.
SELECT date_trunc('hour', received_at) AS hour, instance, outcome, count(*)
FROM idv.callback_events
WHERE received_at > now() - interval '1 day' AND received_at <= now()
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3;

-- 6. What a month of history costs, per table: rows and disk of each
--    partition (the DEFAULT partition holds rows no partition covered). Sizing
--    the retention: rows a month times months kept, bytes the same way.
SELECT p.table_name, p.partition_name, p.range_from, p.range_to,
       greatest(c.reltuples, 0)::bigint AS approx_rows,
       pg_size_pretty(pg_total_relation_size(c.oid)) AS size
FROM (SELECT h.table_name, x.* FROM idv.history_tables h,
             idv.history_partitions(h.table_name) x) p
JOIN pg_class c ON c.oid = to_regclass('idv.' || p.partition_name)
ORDER BY p.table_name, p.is_default, p.range_from;

-- 7. What retention dropped, and when (for transaction_events, the (xid, id)
--    range of the events that went: a consumer whose position is below
--    last_xid, last_id lost events).
SELECT table_name, partition_name, range_from, range_to, row_count, last_xid, last_id,
       dropped_at, dropped_by
FROM idv.history_drops
ORDER BY id;
