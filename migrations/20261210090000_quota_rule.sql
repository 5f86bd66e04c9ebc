-- The quota that applies to a tenant, in one place for the statements that decide it in SQL
-- (claims count a tenant's jobs in flight against it): the tenant's override, else the
-- setting, else unlimited. Unlimited is 2147483647, as `chatq tenants set-quota … unlimited`
-- stores it; the same rule for the checks made in Rust is chatq_common::db::quotas::effective.
CREATE FUNCTION chatq_quota(override integer, setting integer) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN coalesce(override, setting, 2147483647);
