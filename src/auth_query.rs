//! `[auth] query`: the SCRAM verifier of a role that is not in `[[users]]`, read from the
//! primary at each of its logins through a pooled connection of `[auth] user`. The last one
//! read is kept per core, and used when the primary cannot be asked (a failover); a role the
//! server says has no usable verifier is forgotten at once.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgpilot_protocol::classify::Target;
use pgpilot_protocol::scram::ScramSecret;

use crate::core::Core;
use crate::error::Error;
use crate::pool::PoolKey;
use crate::router;

/// Verifiers a core keeps; past this many the cache starts again.
const MAX_CACHED: usize = 10_000;

thread_local!(static CACHE: RefCell<HashMap<String, ScramSecret>> = RefCell::new(HashMap::new()));

/// The verifier of `user`, or `None` when there is none pgpilot can use: no such role (or
/// one that may not log in), a verifier that is not SCRAM-SHA-256, or a lookup that failed
/// with nothing cached.
pub async fn look_up(core: &Rc<Core>, user: &str, database: &str) -> Option<ScramSecret> {
    let config = core.config();
    let aq = config.auth_query.as_ref()?;
    let sql = aq.query.replace("$1", &crate::session::quote_literal(user));
    match fetch(core, &aq.user, database, &sql).await {
        Ok(verifier) => {
            let secret = verifier.as_deref().and_then(ScramSecret::from_verifier);
            if secret.is_none() {
                log::info!("auth query: no SCRAM verifier for role \"{user}\"");
            }
            CACHE.with(|c| {
                let mut c = c.borrow_mut();
                match &secret {
                    Some(s) => {
                        if c.len() >= MAX_CACHED && !c.contains_key(user) {
                            c.clear();
                        }
                        c.insert(user.to_owned(), s.clone());
                    }
                    None => {
                        c.remove(user);
                    }
                }
            });
            secret
        }
        Err(e) => {
            let cached = CACHE.with(|c| c.borrow().get(user).cloned());
            log::warn!(
                "auth query for role \"{user}\" failed ({e}); {}",
                if cached.is_some() {
                    "using the verifier read last"
                } else {
                    "nothing cached, the login fails"
                }
            );
            cached
        }
    }
}

/// Runs the query on the primary as `auth_user` in `database`: the first column of its first
/// row, `None` for no row.
async fn fetch(
    core: &Rc<Core>,
    auth_user: &str,
    database: &str,
    sql: &str,
) -> Result<Option<String>, Error> {
    let primary =
        router::pick(&core.state(), Target::Primary, 0, |_| false).ok_or(Error::NoBackend)?;
    let pool = core.pool(PoolKey {
        backend_id: primary,
        user: auth_user.into(),
        database: database.into(),
    });
    let mut backend = pool.checkout(core.config().pool.checkout_timeout).await?;
    let rows = backend.simple_query(sql).await?;
    pool.checkin(backend);
    Ok(rows
        .first()
        .map(|v| String::from_utf8_lossy(v).into_owned()))
}
