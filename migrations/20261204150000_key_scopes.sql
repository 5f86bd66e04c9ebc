-- Key scopes and expiry. An admin key (is_admin) now sees its own tenant only; an operator key
-- (is_operator) sees the whole fleet. Existing admin keys keep the tenant admin scope: operator
-- keys are made anew with `chatq keys create --operator`.
ALTER TABLE api_keys
    ADD COLUMN is_operator boolean NOT NULL DEFAULT false,
    -- NULL: the key does not expire.
    ADD COLUMN expires_at timestamptz;
