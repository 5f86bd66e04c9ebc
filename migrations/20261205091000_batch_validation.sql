-- A batch is answered `validating` and its input validated in the background; the model its
-- lines ask for is recorded when it passes (OpenAI's batch object reports it).
ALTER TABLE batches ADD COLUMN model text;
-- Validations cut short (their ingress stopped) are found and taken up by another.
CREATE INDEX batches_validating ON batches (created_at) WHERE status = 'validating';
