-- The keys of a tenant's quota locks (chatq_common::db::quotas::locks), in one place.
--
-- A check of a tenant's quota takes a transaction-scoped advisory lock on the tenant. The
-- queued-jobs lock has 8 slots: a recording far below the tenant's quota holds one slot, so
-- several recordings of one busy tenant go on side by side (each leaves room in the quota for
-- what the others may add); a recording near the quota holds all 8 and so runs alone. The
-- in-flight lock has 8 too (a claim for a tenant without that quota holds one); the
-- conversations lock uses slot 0 only. A tenant's slots are 8 consecutive keys: the tenant's id
-- hashed, with its low 3 bits replaced by the slot.
CREATE FUNCTION chatq_tenant_lock_key(tenant uuid, slot integer) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN (hashtext(tenant::text) & -8) | (slot & 7);
