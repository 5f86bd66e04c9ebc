-- Which tier of the reply cache served a job's reply: 'exact' (the same request's reply) or
-- 'semantic' (a near-duplicate's, by embedding). NULL when the reply was not served from the cache;
-- `cached` stays the one flag that says "from any cache".
--
-- The semantic tier's own table is not created here: it needs the pgvector extension, which a
-- server without the semantic cache need not have. The workers create it when the setting is on
-- (chatq_workers::cache::semantic::store).
ALTER TABLE jobs
    ADD COLUMN cache_tier text CHECK (cache_tier IN ('exact', 'semantic'));
