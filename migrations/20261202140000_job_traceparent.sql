-- The W3C traceparent of the request that created the job, sent with every copy of it published
-- to JetStream, so the worker that runs it (even a copy the reconciler publishes later) continues
-- the request's trace. NULL for jobs recorded before it existed: their workers start a new trace.
ALTER TABLE jobs ADD COLUMN traceparent text;
