-- A statement's change to a tenant's usage goes to one of the tenant's 64 rows, not to one row
-- per job.
--
-- Each job counted in the row of its own id, so a worker's claim of 64 jobs of a busy tenant, or
-- the finish of as many, locked most of that tenant's 64 rows until it committed, and the
-- tenant's recordings, claims and finishes waited for each other on them: with one tenant
-- running 1,400 jobs a second, the usage triggers spent 4 ms a statement, mostly waiting
-- (pg_stat_statements in chatq-bench e2e, BENCHMARKS.md "Quota locks with slots"). Now all of a
-- statement's jobs of one tenant count in one row: the shard of their ids added up, modulo 64.
-- For one job that is the row of its own id, as before; two statements of one tenant meet on a
-- row one time in 64. Only a tenant's sum is read, so which row holds a change does not matter
-- (a row may go negative).

CREATE FUNCTION chatq_usage_shard_of(shards bigint) RETURNS smallint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN (shards & 63)::smallint;

CREATE OR REPLACE FUNCTION tenant_usage_jobs_added_or_removed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sign integer := CASE TG_OP WHEN 'DELETE' THEN -1 ELSE 1 END;
BEGIN
    INSERT INTO tenant_usage AS u (tenant_id, shard, queued_jobs, jobs_in_flight)
    SELECT tenant_id, chatq_usage_shard_of(sum(chatq_usage_shard(id))),
           sign * count(*) FILTER (WHERE status = 'queued'), sign * count(*) FILTER (WHERE status = 'running')
      FROM changed WHERE lane = 'interactive' AND status IN ('queued', 'running')
     GROUP BY tenant_id ORDER BY 1, 2
        ON CONFLICT (tenant_id, shard) DO UPDATE
       SET queued_jobs = u.queued_jobs + excluded.queued_jobs,
           jobs_in_flight = u.jobs_in_flight + excluded.jobs_in_flight;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION tenant_usage_jobs_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_usage AS u (tenant_id, shard, queued_jobs, jobs_in_flight)
    SELECT n.tenant_id, chatq_usage_shard_of(sum(chatq_usage_shard(n.id))),
           sum((n.status = 'queued')::int - (o.status = 'queued')::int),
           sum((n.status = 'running')::int - (o.status = 'running')::int)
      FROM old_rows o JOIN new_rows n ON n.id = o.id
     WHERE n.lane = 'interactive' AND n.status <> o.status
       AND (n.status IN ('queued', 'running') OR o.status IN ('queued', 'running'))
     GROUP BY n.tenant_id ORDER BY 1, 2
        ON CONFLICT (tenant_id, shard) DO UPDATE
       SET queued_jobs = u.queued_jobs + excluded.queued_jobs,
           jobs_in_flight = u.jobs_in_flight + excluded.jobs_in_flight;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION tenant_usage_conversations_added_or_removed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sign integer := CASE TG_OP WHEN 'DELETE' THEN -1 ELSE 1 END;
BEGIN
    INSERT INTO tenant_usage AS u (tenant_id, shard, conversations)
    SELECT tenant_id, chatq_usage_shard_of(sum(chatq_usage_shard(id))), sign * count(*)
      FROM changed GROUP BY tenant_id ORDER BY 1, 2
        ON CONFLICT (tenant_id, shard) DO UPDATE SET conversations = u.conversations + excluded.conversations;
    RETURN NULL;
END $$;
