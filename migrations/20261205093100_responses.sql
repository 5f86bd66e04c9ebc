-- The Responses API: a response is a chat completion job plus what the Responses API says about
-- it (its input items, instructions, metadata, the response it continues). Deleting the job
-- deletes the response.
CREATE TABLE responses (
    id                   uuid PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    tenant_id            uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- No foreign key: the response continued may be deleted; its history lives on in this one's job.
    previous_response_id uuid,
    instructions         text,
    -- The input items as given, normalised, each with its id (GET /v1/responses/{id}/input_items).
    input                jsonb NOT NULL,
    metadata             jsonb NOT NULL DEFAULT '{}',
    store                boolean NOT NULL,
    background           boolean NOT NULL,
    temperature          float8,
    top_p                float8,
    max_output_tokens    integer,
    created_at           timestamptz NOT NULL DEFAULT now()
);

-- A response's job is kept as long as conversation data is (retention_idle_conversations_secs),
-- not as long as other finished jobs: the finished-jobs sweep skips it, and its index leaves it
-- out, so a sweep never reads past the responses it keeps.
ALTER TABLE jobs ADD COLUMN response boolean NOT NULL DEFAULT false;
DROP INDEX jobs_finished;
CREATE INDEX jobs_finished ON jobs (finished_at)
    WHERE status IN ('succeeded', 'cancelled', 'expired') AND NOT response;
CREATE INDEX jobs_responses_finished ON jobs (finished_at) WHERE response;
