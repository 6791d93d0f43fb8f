//! Learns from the primary's catalog which functions may write: every VOLATILE function
//! outside `pg_catalog` and `information_schema` (the built-in ones are known by name), per
//! database, loaded in the background the first time a core serves that database.

use std::rc::Rc;

use pgpilot_protocol::classify::{Functions, Target};

use crate::core::Core;
use crate::pool::PoolKey;
use crate::router;

/// The catalog query: user-defined functions that may have side effects.
pub const VOLATILE_FUNCTIONS: &str = "SELECT DISTINCT p.proname::text FROM pg_catalog.pg_proc p \
     JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE p.provolatile = 'v' AND p.prokind = 'f' \
     AND n.nspname NOT IN ('pg_catalog', 'information_schema')";

/// Loads the writing functions of `database` through the primary's pool and installs them on
/// this core; on failure the configured knowledge stays in force.
pub async fn load(core: Rc<Core>, user: Rc<str>, database: Rc<str>) {
    let Some(primary) = router::pick(&core.state(), Target::Primary, 0, |_| false) else {
        return;
    };
    let pool = core.pool(PoolKey {
        backend_id: primary,
        user,
        database: database.clone(),
    });
    let rows = match pool.checkout(core.config().pool.checkout_timeout).await {
        Ok(mut backend) => {
            let rows = backend.simple_query(VOLATILE_FUNCTIONS).await;
            if rows.is_ok() {
                pool.checkin(backend);
            }
            rows
        }
        Err(e) => Err(e),
    };
    match rows {
        Ok(rows) => {
            let names: Vec<String> = rows
                .iter()
                .map(|r| String::from_utf8_lossy(r).into_owned())
                .collect();
            log::info!(
                "database {database}: {} volatile functions treated as writes",
                names.len()
            );
            let functions: Functions = core
                .config()
                .routing
                .functions
                .with_writes(names.iter().map(String::as_str));
            core.install_functions(database, Rc::new(functions));
        }
        Err(e) => {
            log::warn!("database {database}: cannot read volatile functions from the primary: {e}")
        }
    }
}
