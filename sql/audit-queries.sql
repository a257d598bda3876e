-- Audit queries worth copying. Run them as a member of idv_reader.

-- 1. Every callback a transaction received, in order, with who sent it.
SELECT received_at, outcome, passed, sub_code, client_ip, instance
FROM idv.callback_events
WHERE transaction_id = :'tx'
ORDER BY id;

-- 2. Rejected callbacks by client address over the last day (token guessing?).
SELECT client_ip, count(*) AS rejected, min(received_at) AS first, max(received_at) AS last
FROM idv.callback_events
WHERE outcome = 'rejected' AND received_at > now() - interval '1 day'
GROUP BY client_ip
ORDER BY rejected DESC
LIMIT 20;

-- 3. Transactions whose callbacks disagreed: the recorded result and the others.
SELECT s.transaction_id, s.status, s.passed, s.sub_code, e.received_at,
       e.passed AS other_passed, e.sub_code AS other_sub_code, e.client_ip
FROM idv.callback_events e
JOIN idv.transaction_status s USING (transaction_id)
WHERE e.outcome = 'conflict'
ORDER BY e.received_at DESC;

-- 4. The history of one transaction's status, as business workflows saw it.
SELECT id, at, status, previous_status, passed, sub_code, confirmed
FROM idv.transaction_events
WHERE transaction_id = :'tx'
ORDER BY id;

-- 5. Outcomes per hour and instance over the last day.
SELECT date_trunc('hour', received_at) AS hour, instance, outcome, count(*)
FROM idv.callback_events
WHERE received_at > now() - interval '1 day'
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3;
