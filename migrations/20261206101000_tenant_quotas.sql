-- Per-tenant quotas (README "Security"): what each tenant holds now, and overrides of the
-- CHATQ_TENANT_MAX_* settings.

-- Overrides set with `chatq tenants set-quota`; NULL keeps the setting.
CREATE TABLE tenant_quotas (
    tenant_id       uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    queued_jobs     integer CHECK (queued_jobs >= 0),
    jobs_in_flight  integer CHECK (jobs_in_flight >= 0),
    event_streams   integer CHECK (event_streams >= 0),
    conversations   integer CHECK (conversations >= 0)
);

-- What each tenant holds, kept by the triggers below so that a quota check reads one row
-- instead of counting: interactive jobs queued and running, and stored conversations. Derived
-- data, so no foreign key (a tenant's rows go with its jobs and conversations).
CREATE TABLE tenant_usage (
    tenant_id       uuid PRIMARY KEY,
    queued_jobs     integer NOT NULL DEFAULT 0,
    jobs_in_flight  integer NOT NULL DEFAULT 0,
    conversations   integer NOT NULL DEFAULT 0
);

-- One statement-level trigger per event (transition tables allow no more), each adding one row
-- per tenant, in tenant order, so statements touching several tenants cannot deadlock.
CREATE FUNCTION tenant_usage_jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_usage AS u (tenant_id, queued_jobs, jobs_in_flight)
    SELECT tenant_id, count(*) FILTER (WHERE status = 'queued'), count(*) FILTER (WHERE status = 'running')
      FROM inserted WHERE lane = 'interactive' AND status IN ('queued', 'running')
     GROUP BY tenant_id ORDER BY tenant_id
        ON CONFLICT (tenant_id) DO UPDATE
       SET queued_jobs = u.queued_jobs + excluded.queued_jobs,
           jobs_in_flight = u.jobs_in_flight + excluded.jobs_in_flight;
    RETURN NULL;
END $$;

CREATE FUNCTION tenant_usage_jobs_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_usage AS u (tenant_id, queued_jobs, jobs_in_flight)
    SELECT n.tenant_id,
           sum((n.status = 'queued')::int - (o.status = 'queued')::int),
           sum((n.status = 'running')::int - (o.status = 'running')::int)
      FROM old_rows o JOIN new_rows n ON n.id = o.id
     WHERE n.lane = 'interactive' AND n.status <> o.status
     GROUP BY n.tenant_id
    HAVING sum((n.status IN ('queued', 'running'))::int + (o.status IN ('queued', 'running'))::int) > 0
     ORDER BY n.tenant_id
        ON CONFLICT (tenant_id) DO UPDATE
       SET queued_jobs = u.queued_jobs + excluded.queued_jobs,
           jobs_in_flight = u.jobs_in_flight + excluded.jobs_in_flight;
    RETURN NULL;
END $$;

CREATE FUNCTION tenant_usage_jobs_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tenant_usage u
       SET queued_jobs = u.queued_jobs - d.queued, jobs_in_flight = u.jobs_in_flight - d.running
      FROM (SELECT tenant_id, count(*) FILTER (WHERE status = 'queued') AS queued,
                   count(*) FILTER (WHERE status = 'running') AS running
              FROM deleted WHERE lane = 'interactive' AND status IN ('queued', 'running')
             GROUP BY tenant_id ORDER BY tenant_id) d
     WHERE u.tenant_id = d.tenant_id;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_usage_inserted AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION tenant_usage_jobs_inserted();
CREATE TRIGGER jobs_usage_updated AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tenant_usage_jobs_updated();
CREATE TRIGGER jobs_usage_deleted AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION tenant_usage_jobs_deleted();

CREATE FUNCTION tenant_usage_conversations_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_usage AS u (tenant_id, conversations)
    SELECT tenant_id, count(*) FROM inserted GROUP BY tenant_id ORDER BY tenant_id
        ON CONFLICT (tenant_id) DO UPDATE SET conversations = u.conversations + excluded.conversations;
    RETURN NULL;
END $$;

CREATE FUNCTION tenant_usage_conversations_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tenant_usage u SET conversations = u.conversations - d.n
      FROM (SELECT tenant_id, count(*) AS n FROM deleted GROUP BY tenant_id ORDER BY tenant_id) d
     WHERE u.tenant_id = d.tenant_id;
    RETURN NULL;
END $$;

CREATE TRIGGER conversations_usage_inserted AFTER INSERT ON conversations
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION tenant_usage_conversations_inserted();
CREATE TRIGGER conversations_usage_deleted AFTER DELETE ON conversations
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION tenant_usage_conversations_deleted();

-- What existing rows hold.
INSERT INTO tenant_usage (tenant_id, queued_jobs, jobs_in_flight, conversations)
SELECT t.id,
       (SELECT count(*) FROM jobs j WHERE j.tenant_id = t.id AND j.lane = 'interactive' AND j.status = 'queued'),
       (SELECT count(*) FROM jobs j WHERE j.tenant_id = t.id AND j.lane = 'interactive' AND j.status = 'running'),
       (SELECT count(*) FROM conversations c WHERE c.tenant_id = t.id)
  FROM tenants t;
