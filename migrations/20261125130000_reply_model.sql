-- The model that actually answered, as the provider named it (it can differ from the model asked
-- for: an alias resolved upstream, or the simulated provider's "simulated/<model>").
ALTER TABLE jobs ADD COLUMN reply_model text;
