-- When a reconciler last checked that every queued job has a copy in the stream (one reconciler
-- of the fleet per period claims the check by moving this forward).
ALTER TABLE jetstream_streams ADD COLUMN audited_at timestamptz;
