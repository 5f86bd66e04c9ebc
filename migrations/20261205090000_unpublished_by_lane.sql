-- The reconciler publishes each lane's unpublished jobs separately (interactive first), because
-- each lane has its own room in the jobs stream: a batch waiting for room in the batch lane must
-- not stand in front of interactive jobs. The index it reads them by is per lane.
CREATE INDEX jobs_unpublished_by_lane ON jobs (lane, created_at) WHERE status = 'queued' AND published_at IS NULL;
DROP INDEX jobs_unpublished;
