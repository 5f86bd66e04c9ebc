-- Files (POST /v1/files) and batches (POST /v1/batches).
--
-- An uploaded file's bytes live here, in chunks of about a megabyte, so an upload is streamed to
-- storage without being held whole, commits in the same transaction as its metadata (an upload
-- that fails leaves nothing), and survives a lost NATS store like every other accepted input.
-- A batch's output and error files hold no bytes: their lines are rendered from the batch's jobs
-- when they are read, so the output so far can be downloaded while the batch runs.
CREATE TABLE files (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    purpose     text NOT NULL,
    filename    text NOT NULL,
    -- Null for a batch's output or error file whose size is not known yet (it is still growing).
    bytes       bigint,
    -- Lines of an upload (a last line without a newline counts).
    lines       bigint NOT NULL DEFAULT 0,
    -- For a batch's output and error files: the batch, and which of the two this is.
    batch_id    uuid,
    contents    text NOT NULL DEFAULT 'upload' CHECK (contents IN ('upload', 'batch_output', 'batch_errors')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz
);
CREATE INDEX files_tenant ON files (tenant_id, id DESC);

CREATE TABLE file_chunks (
    file_id  uuid NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    seq      integer NOT NULL,
    data     bytea NOT NULL,
    PRIMARY KEY (file_id, seq)
);

CREATE TABLE batches (
    id                    uuid PRIMARY KEY,
    tenant_id             uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- Not a foreign key: deleting the input file leaves the batch (and its id in it) alone.
    input_file_id         uuid NOT NULL,
    endpoint              text NOT NULL,
    completion_window     text NOT NULL,
    status                text NOT NULL CHECK (status IN ('validating', 'failed', 'in_progress', 'finalizing',
                                                          'completed', 'expired', 'cancelling', 'cancelled')),
    metadata              jsonb,
    output_file_id        uuid,
    error_file_id         uuid,
    -- The input's invalid lines when validation failed: [{code, message, param, line}].
    errors                jsonb,
    -- Lines in the input file.
    total                 integer NOT NULL DEFAULT 0,
    -- Seconds the output and error files are kept after the batch was created (null: as long as the batch).
    output_expires_secs   bigint,
    created_at            timestamptz NOT NULL DEFAULT now(),
    expires_at            timestamptz NOT NULL,
    in_progress_at        timestamptz,
    finalizing_at         timestamptz,
    completed_at          timestamptz,
    failed_at             timestamptz,
    expired_at            timestamptz,
    cancelling_at         timestamptz,
    cancelled_at          timestamptz
);
CREATE INDEX batches_tenant ON batches (tenant_id, id DESC);

-- A line whose body chat completions would refuse: answered in the error file with the 4xx that
-- request would have got, never run.
CREATE TABLE batch_refusals (
    batch_id     uuid NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    line         integer NOT NULL,
    custom_id    text NOT NULL,
    status_code  smallint NOT NULL,
    -- The OpenAI error body: {"error": {message, type, param, code}}.
    body         jsonb NOT NULL,
    PRIMARY KEY (batch_id, line)
);

-- Every other line is a job on the batch lane. Its results stay with the batch (the retention
-- sweep leaves batch jobs alone; deleting the batch deletes them).
ALTER TABLE jobs ADD COLUMN batch_id uuid REFERENCES batches (id) ON DELETE CASCADE;
ALTER TABLE jobs ADD COLUMN custom_id text;
CREATE INDEX jobs_batch ON jobs (batch_id, status, id) WHERE batch_id IS NOT NULL;
