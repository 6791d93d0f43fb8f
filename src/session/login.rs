//! Login of an authenticated client: the ParameterStatus set (from a backend, or cached per
//! pool), BackendKeyData and the first ReadyForQuery.

use pgpilot_protocol::backend::TransactionStatus;
use pgpilot_protocol::classify::Target;
use pgpilot_protocol::encode::{self, ErrorFields};

use super::shell::Client;
use super::Session;
use crate::config::PoolMode;
use crate::error::Error;
use crate::pool::PoolKey;
use crate::router;

impl Client {
    /// Logs the authenticated client in: a backend checks its parameters and provides the
    /// ParameterStatus set; then BackendKeyData and ReadyForQuery.
    pub(super) async fn login(&mut self, secret: u32) -> Result<(), ErrorFields> {
        let s = &mut self.session;
        if s.mode == PoolMode::Session || !s.login_from_cache() {
            self.login_on_backend().await?;
        }
        self.adopt_backend_pid();
        let s = &mut self.session;
        encode::backend_key_data(&mut s.out, s.pid, secret);
        encode::ready_for_query(&mut s.out, TransactionStatus::Idle);
        if s.mode == PoolMode::Transaction {
            s.release();
        }
        self.perform()
            .await
            .map_err(|e| ErrorFields::fatal("08006", e.to_string()))
    }

    /// Session mode: the client is told the real pid of the primary backend that serves it,
    /// as PostgreSQL would tell it. Not a replica's: `pg_terminate_backend` of it would run on
    /// the primary and end someone else's backend.
    fn adopt_backend_pid(&mut self) {
        let s = &mut self.session;
        let Some(att) = s.attached.as_ref() else {
            return;
        };
        if s.mode != PoolMode::Session || att.on_replica {
            return;
        }
        let real = att.backend.key.0;
        if s.core.adopt_pid(s.pid, real) {
            log::debug!("session={} is session={real}, its backend's pid", s.pid);
            s.pid = real;
            self.admission.pid = Some(real);
        }
    }

    async fn login_on_backend(&mut self) -> Result<(), ErrorFields> {
        // While the primary is away (a failover), transaction mode logs in on a replica, so
        // that new clients' reads flow; their writes wait for the primary as everyone's do.
        let replica_will_do = self.session.mode == PoolMode::Transaction;
        let checkout = self
            .connect(Target::Primary, None, replica_will_do)
            .await
            .map_err(|e| match e {
                Error::BackendRejected { code, message, .. } => {
                    ErrorFields::fatal(intern_code(&code), message)
                }
                Error::PoolTimeout => ErrorFields::fatal("53300", e.to_string()),
                Error::NoPrimary { .. } => ErrorFields::fatal("57P03", e.to_string()),
                e => ErrorFields::fatal("08006", e.to_string()),
            })?;
        let s = &mut self.session;
        let pool = checkout.link.pool.clone();
        pool.remember_login(s.gucs.hash, &checkout.backend.params.list);
        s.install(checkout);
        // Share the pool's copy: idle sessions then hold no ParameterStatus set of their own.
        if let Some(shared) = pool.login_params(s.gucs.hash) {
            if *shared == *s.view {
                s.view = shared;
            }
        }
        Ok(())
    }
}

impl<L> Session<L> {
    /// Transaction mode, parameter set seen before on the primary's pool: no backend needed.
    fn login_from_cache(&mut self) -> bool {
        let Some(id) = router::pick(&self.core.state(), Target::Primary, 0, |_| false) else {
            return false;
        };
        let key = PoolKey {
            backend_id: id,
            user: self.user.clone(),
            database: self.database.clone(),
        };
        let Some(params) = self.core.pool(key).login_params(self.gucs.hash) else {
            return false;
        };
        for (name, value) in params.iter() {
            encode::parameter_status(&mut self.out, name, value);
        }
        self.view = params;
        self.view_version = u64::MAX;
        true
    }
}

/// SQLSTATEs we pass on from backends at login, as `&'static str`.
pub(super) fn intern_code(code: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "3D000", "28P01", "28000", "53300", "57P03", "42704", "22023", "0A000", "55P02", "42501",
    ];
    KNOWN
        .iter()
        .find(|k| **k == code)
        .copied()
        .unwrap_or("08006")
}
