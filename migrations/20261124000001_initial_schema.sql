-- chatq's schema. Postgres is the source of truth: NATS carries job ids, this holds everything else.
-- Ids are UUIDv7, so the primary-key order is creation order.

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Keys are stored as the SHA-256 of the whole key: they carry 192 random bits, so a fast hash is
-- safe, and lookup by hash is one index probe. The key itself is shown once, at creation.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key_hash    bytea NOT NULL UNIQUE,
    -- The first characters of the key, so people can tell keys apart without seeing them.
    prefix      text NOT NULL,
    is_admin    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE conversations (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    title             text,
    system_prompt     text,
    model             text,
    metadata          jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- The sequence number the next message gets; only ever grows, even when history is cleared.
    next_seq          bigint NOT NULL DEFAULT 1,
    -- Messages currently stored (bounded by max_messages_per_conversation).
    message_count     integer NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    last_activity_at  timestamptz NOT NULL DEFAULT now()
);
-- Listing, newest first, with keyset pagination on id.
CREATE INDEX conversations_tenant_id ON conversations (tenant_id, id DESC);

CREATE TABLE messages (
    id               uuid PRIMARY KEY,
    conversation_id  uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    tenant_id        uuid NOT NULL,
    seq              bigint NOT NULL,
    role             text NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content          text NOT NULL,
    -- The job this message belongs to: the one it started (user) or the one that wrote it (assistant).
    job_id           uuid,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- History reads and the prompt window walk this index.
    CONSTRAINT messages_conversation_seq UNIQUE (conversation_id, seq)
);
-- Exactly-once effect: however often a job is delivered, it writes at most one reply.
CREATE UNIQUE INDEX messages_one_reply_per_job ON messages (job_id) WHERE role = 'assistant';

CREATE TABLE jobs (
    id                 uuid PRIMARY KEY,
    tenant_id          uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- Null for stateless chat completions.
    conversation_id    uuid REFERENCES conversations (id) ON DELETE CASCADE,
    lane               text NOT NULL CHECK (lane IN ('interactive', 'batch')),
    status             text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'expired')),
    -- What to run (common::job::JobRequest), with the model already resolved.
    request            jsonb NOT NULL,
    model              text NOT NULL,
    user_message_id    uuid,
    idempotency_key    text,
    -- SHA-256 of the request that first used the idempotency key, to refuse a different one.
    request_hash       bytea,
    attempts           integer NOT NULL DEFAULT 0,
    -- The claim: a worker owns a running job while its lease lasts. Results are written only with
    -- the matching token, so a worker that lost its claim cannot write.
    claim_token        uuid,
    claimed_by         text,
    lease_expires_at   timestamptz,
    cancel_requested_at timestamptz,
    deadline_at        timestamptz NOT NULL,
    -- Set once JetStream has acknowledged the publish; the reconciler publishes jobs left without it.
    published_at       timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    started_at         timestamptz,
    finished_at        timestamptz,
    queued_ms          integer,
    ttft_ms            integer,
    upstream_ms        integer,
    reply_message_id   uuid,
    reply_content      text,
    finish_reason      text,
    usage              jsonb,
    cached             boolean NOT NULL DEFAULT false,
    error_type         text,
    error_message      text
);
-- One reply in progress per conversation: the 409 conversation_busy rule, enforced by the database.
CREATE UNIQUE INDEX jobs_one_active_per_conversation ON jobs (conversation_id)
    WHERE status IN ('queued', 'running');
CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Deleting a conversation cascades to its jobs.
CREATE INDEX jobs_conversation ON jobs (conversation_id);
-- Reconciler: queued jobs never acknowledged by JetStream, oldest first.
CREATE INDEX jobs_unpublished ON jobs (created_at) WHERE status = 'queued' AND published_at IS NULL;
-- Reconciler: every queued job, after the stream was lost.
CREATE INDEX jobs_queued ON jobs (created_at) WHERE status = 'queued';
-- Reconciler: running jobs whose worker stopped renewing its lease.
CREATE INDEX jobs_running_lease ON jobs (lease_expires_at) WHERE status = 'running';

CREATE TABLE feedback (
    message_id  uuid PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    tenant_id   uuid NOT NULL,
    rating      smallint NOT NULL CHECK (rating IN (-1, 1)),
    comment     text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
