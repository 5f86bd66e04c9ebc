-- A tenant's usage spread over 64 rows instead of one.
--
-- Every insert, claim and finish of a job updates its tenant's usage (the triggers below), and a
-- row lock is held until the transaction commits. With one row per tenant, every transaction that
-- wrote a job of a busy tenant waited for the one before it: a flooding tenant's writes ran one at
-- a time, and a worker's claim that carried another tenant's job waited behind them
-- (BENCHMARKS.md, "The claim by key"). Now each job counts in one of its tenant's 64 rows, chosen
-- by the job's id (a conversation by its own id), so writes of different jobs rarely meet; a check
-- adds the tenant's rows up. The checks that must hold across ingresses (queued jobs,
-- conversations) no longer lock a usage row: they take a transaction-scoped advisory lock on the
-- tenant (chatq_common::db::quotas::lock_usage), which only other such checks wait for.

-- The usage row a job or conversation counts in: the low 6 bits of the id's last byte (random in
-- a UUIDv7).
CREATE FUNCTION chatq_usage_shard(id uuid) RETURNS smallint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN (get_byte(uuid_send(id), 15) & 63)::smallint;

-- Rows already there become shard 0, so every sum stays what it was.
ALTER TABLE tenant_usage ADD COLUMN shard smallint NOT NULL DEFAULT 0;
ALTER TABLE tenant_usage DROP CONSTRAINT tenant_usage_pkey;
ALTER TABLE tenant_usage ADD PRIMARY KEY (tenant_id, shard);

-- The triggers keep their shape (one statement, rows in key order so that statements touching
-- several rows cannot deadlock), grouped by shard as well as by tenant. Each one adds its change
-- to the rows (creating missing ones), deletions too: a row counted before this migration (in
-- shard 0) may be taken away from another shard, and only the tenant's sum has to be right. An
-- insert and a delete are one function with opposite signs, over the rows the statement added or
-- removed (`changed`).
DROP TRIGGER jobs_usage_inserted ON jobs;
DROP TRIGGER jobs_usage_deleted ON jobs;
DROP TRIGGER conversations_usage_inserted ON conversations;
DROP TRIGGER conversations_usage_deleted ON conversations;
DROP FUNCTION tenant_usage_jobs_inserted();
DROP FUNCTION tenant_usage_jobs_deleted();
DROP FUNCTION tenant_usage_conversations_inserted();
DROP FUNCTION tenant_usage_conversations_deleted();

CREATE FUNCTION tenant_usage_jobs_added_or_removed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sign integer := CASE TG_OP WHEN 'DELETE' THEN -1 ELSE 1 END;
BEGIN
    INSERT INTO tenant_usage AS u (tenant_id, shard, queued_jobs, jobs_in_flight)
    SELECT tenant_id, chatq_usage_shard(id),
           sign * count(*) FILTER (WHERE status = 'queued'), sign * count(*) FILTER (WHERE status = 'running')
      FROM changed WHERE lane = 'interactive' AND status IN ('queued', 'running')
     GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (tenant_id, shard) DO UPDATE
       SET queued_jobs = u.queued_jobs + excluded.queued_jobs,
           jobs_in_flight = u.jobs_in_flight + excluded.jobs_in_flight;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION tenant_usage_jobs_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_usage AS u (tenant_id, shard, queued_jobs, jobs_in_flight)
    SELECT n.tenant_id, chatq_usage_shard(n.id),
           sum((n.status = 'queued')::int - (o.status = 'queued')::int),
           sum((n.status = 'running')::int - (o.status = 'running')::int)
      FROM old_rows o JOIN new_rows n ON n.id = o.id
     WHERE n.lane = 'interactive' AND n.status <> o.status
     GROUP BY 1, 2
    HAVING sum((n.status IN ('queued', 'running'))::int + (o.status IN ('queued', 'running'))::int) > 0
     ORDER BY 1, 2
        ON CONFLICT (tenant_id, shard) DO UPDATE
       SET queued_jobs = u.queued_jobs + excluded.queued_jobs,
           jobs_in_flight = u.jobs_in_flight + excluded.jobs_in_flight;
    RETURN NULL;
END $$;

CREATE FUNCTION tenant_usage_conversations_added_or_removed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sign integer := CASE TG_OP WHEN 'DELETE' THEN -1 ELSE 1 END;
BEGIN
    INSERT INTO tenant_usage AS u (tenant_id, shard, conversations)
    SELECT tenant_id, chatq_usage_shard(id), sign * count(*) FROM changed GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (tenant_id, shard) DO UPDATE SET conversations = u.conversations + excluded.conversations;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_usage_inserted AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION tenant_usage_jobs_added_or_removed();
CREATE TRIGGER jobs_usage_deleted AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION tenant_usage_jobs_added_or_removed();
CREATE TRIGGER conversations_usage_inserted AFTER INSERT ON conversations
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION tenant_usage_conversations_added_or_removed();
CREATE TRIGGER conversations_usage_deleted AFTER DELETE ON conversations
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION tenant_usage_conversations_added_or_removed();
