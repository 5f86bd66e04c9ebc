-- What the reconciler needs to rebuild the JetStream queue from Postgres, and what retrying a dead
-- letter needs. See workers/src/reconciler.rs for how these are used.

-- The creation time of each JetStream stream, as a reconciler last saw it. A stream whose creation
-- time changes was recreated: its store was lost, so every queued job is published again.
CREATE TABLE jetstream_streams (
    name        text PRIMARY KEY,
    created_at  timestamptz NOT NULL,
    -- When a reconciler recorded this creation time (when it noticed the stream was new).
    noticed_at  timestamptz NOT NULL DEFAULT now()
);

-- Which copy of a job the queue should hold, 0 for the first. It goes up when chatq knows or
-- suspects the copy in JetStream is gone (a claim abandoned long ago, a delivery JetStream will not
-- repeat, a retry from the dead letters), so the new copy gets a new Nats-Msg-Id and is not dropped
-- as a duplicate of the old one.
ALTER TABLE jobs ADD COLUMN publication integer NOT NULL DEFAULT 0;
-- Attempts made before an operator retried the job (attempts then starts again from 0), so the ids
-- of the job's events keep increasing across retries.
ALTER TABLE jobs ADD COLUMN earlier_attempts integer NOT NULL DEFAULT 0;

-- Dead letters, most recent failure first (GET /v1/admin/dead-letters).
CREATE INDEX jobs_failed ON jobs (finished_at DESC, id DESC) WHERE status = 'failed';
