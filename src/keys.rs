//! `chatq keys`: creating, listing and revoking API keys, straight against Postgres.
//!
//! Revoking also tells every ingress, over NATS, to forget the keys it has cached, so the key
//! stops working within a second; should NATS be unreachable, the ingresses' key cache still
//! drops it within 30 seconds.

use anyhow::Context as _;
use chatq_common::db::keys::{self, KeyScope};
use chatq_common::ids::ApiKeyId;
use chatq_common::topology::Topology;
use chatq_common::{Settings, db, nats};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `chatq keys create`: the key alone on standard output, the explanation on standard error.
pub async fn create(
    settings: Settings,
    tenant: &str,
    scope: KeyScope,
    expires_in_days: Option<u32>,
) -> anyhow::Result<()> {
    let tenant = tenant.trim();
    anyhow::ensure!(!tenant.is_empty(), "--tenant must not be empty");
    let expires_at = expires_in_days
        .map(|days| OffsetDateTime::now_utc() + time::Duration::days(i64::from(days)));
    let pool = db::connect(&settings.database).await?;
    db::migrate(&pool).await?;
    let key = keys::create_key(&pool, tenant, scope, expires_at).await?;
    let scope = match scope {
        KeyScope::Tenant => "an ",
        KeyScope::Admin => "an admin ",
        KeyScope::Operator => "an operator ",
    };
    let expiry = expires_at
        .and_then(|at| at.format(&Rfc3339).ok())
        .map_or(String::new(), |at| format!(", valid until {at},"));
    #[expect(
        clippy::print_stderr,
        reason = "the explanation for a person; the key goes to stdout"
    )]
    {
        eprintln!(
            "Created {scope}API key {}{expiry} for tenant \"{tenant}\". It is shown only once:",
            key.key_id
        );
    }
    #[expect(
        clippy::print_stdout,
        reason = "the command's output, for `KEY=$(chatq keys create ...)`"
    )]
    {
        println!("{}", key.plaintext);
    }
    Ok(())
}

/// `chatq keys list`: one line per key, tab-separated, with a header.
pub async fn list(settings: Settings, tenant: Option<&str>) -> anyhow::Result<()> {
    let pool = db::connect(&settings.database).await?;
    db::migrate(&pool).await?;
    let listed = keys::list_keys(&pool, tenant).await?;
    let date = |at: Option<OffsetDateTime>| {
        at.and_then(|at| at.format(&Rfc3339).ok())
            .unwrap_or_else(|| "-".into())
    };
    let mut out = String::from("id\ttenant\tprefix\tscope\tcreated\texpires\trevoked\n");
    for key in listed {
        let scope = match (key.is_operator, key.is_admin) {
            (true, _) => "operator",
            (false, true) => "admin",
            (false, false) => "tenant",
        };
        out.push_str(&format!(
            "{}\t{}\t{}\t{scope}\t{}\t{}\t{}\n",
            key.key_id,
            key.tenant,
            key.prefix,
            date(Some(key.created_at)),
            date(key.expires_at),
            date(key.revoked_at),
        ));
    }
    #[expect(clippy::print_stdout, reason = "the command's output")]
    {
        print!("{out}");
    }
    Ok(())
}

/// `chatq keys revoke KEY_ID`.
pub async fn revoke(settings: Settings, key_id: &str) -> anyhow::Result<()> {
    let key_id: ApiKeyId = key_id
        .trim()
        .parse()
        .with_context(|| format!("'{key_id}' is not a key id (`chatq keys list` shows them)"))?;
    let pool = db::connect(&settings.database).await?;
    db::migrate(&pool).await?;
    anyhow::ensure!(
        keys::revoke_key(&pool, key_id).await?,
        "no key {key_id} that is not revoked already"
    );
    let told = tell_ingresses(&settings).await;
    #[expect(clippy::print_stderr, reason = "the outcome, for a person")]
    {
        match told {
            Ok(()) => {
                eprintln!("Revoked {key_id}; every ingress has been told to stop accepting it.")
            }
            Err(err) => eprintln!(
                "Revoked {key_id}. The ingresses could not be told ({err:#}); they stop accepting \
                 it within 30 seconds, when their key cache expires."
            ),
        }
    }
    Ok(())
}

/// Publishes the revocation on NATS and waits until the server has it.
async fn tell_ingresses(settings: &Settings) -> anyhow::Result<()> {
    let client = nats::connect(&settings.nats.url, "keys").await?;
    let topology = Topology::new(&settings.nats);
    client
        .publish(topology.key_revocations_subject(), "".into())
        .await
        .context("cannot publish the revocation")?;
    client
        .flush()
        .await
        .context("cannot flush the revocation")?;
    Ok(())
}
