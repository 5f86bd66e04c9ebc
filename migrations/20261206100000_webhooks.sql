-- Completion webhooks: a tenant's endpoints, and the outbox of deliveries owed to them.
--
-- An outbox row is written by a trigger, in the transaction that ends a job, a response or a
-- batch, whatever statement ends it (a worker's reply, a failure, a cancel, an expiry, a batch
-- settling): the delivery is committed exactly when the result is. A tenant without endpoints pays
-- one index probe of webhook_endpoints per finished job, and nothing on any other update.

CREATE TABLE webhook_endpoints (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    url         text NOT NULL,
    -- Event types (`job.succeeded`) or a family's wildcard (`job.*`).
    events      text[] NOT NULL,
    description text,
    -- The HMAC key deliveries are signed with: kept as is, since signing needs it; shown once.
    secret      bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant_id, id DESC);

CREATE TABLE webhook_outbox (
    -- The event's id (`evt_…`), sent as `webhook-id` on every attempt.
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    type            text NOT NULL,
    -- The job, response or batch the event is about.
    object_id       uuid NOT NULL,
    -- When the result was committed (the event's `created_at`).
    created_at      timestamptz NOT NULL DEFAULT now(),
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    -- A pending row is due then; a claimed one is leased to its deliverer until then.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    finished_at     timestamptz
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_outbox_finished ON webhook_outbox (finished_at) WHERE status <> 'pending';

-- One outbox row for each of the tenant's endpoints that wants the event: `batch.<status>` for
-- a batch; for a job, `response.*` when it answers a response and `job.<status>` otherwise (a
-- batch's lines are reported by their batch). One PL/pgSQL function with the INSERT inline, so
-- its plan is cached per session and a finished job costs one probe of webhook_endpoints_tenant.
CREATE FUNCTION webhook_enqueue() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    event text;
BEGIN
    IF TG_TABLE_NAME = 'batches' THEN
        event := 'batch.' || NEW.status;
    ELSIF NOT NEW.response THEN
        event := 'job.' || NEW.status;
    ELSE
        event := CASE WHEN NEW.status = 'succeeded' AND NEW.finish_reason = 'length' THEN 'response.incomplete'
                      WHEN NEW.status = 'succeeded' THEN 'response.completed'
                      WHEN NEW.status = 'cancelled' THEN 'response.cancelled'
                      ELSE 'response.failed' END;
    END IF;
    INSERT INTO webhook_outbox (endpoint_id, type, object_id)
    SELECT e.id, event, NEW.id FROM webhook_endpoints e
     WHERE e.tenant_id = NEW.tenant_id
       AND (event = ANY (e.events) OR split_part(event, '.', 1) || '.*' = ANY (e.events));
    RETURN NULL;
END $$;

-- Only a change into an ending status calls the function: claims, leases and progress updates
-- pay nothing.
CREATE TRIGGER jobs_webhooks AFTER UPDATE OF status ON jobs FOR EACH ROW
    WHEN (NEW.status IN ('succeeded', 'failed', 'cancelled', 'expired')
          AND OLD.status IS DISTINCT FROM NEW.status AND NEW.batch_id IS NULL)
    EXECUTE FUNCTION webhook_enqueue();

CREATE TRIGGER batches_webhooks AFTER UPDATE OF status ON batches FOR EACH ROW
    WHEN (NEW.status IN ('completed', 'failed', 'expired', 'cancelled')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION webhook_enqueue();
