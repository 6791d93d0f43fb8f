//! The admin console: database `pgpilot` (or `pgbouncer`, so PgBouncer's tools connect
//! unchanged) on the proxy's own port, for the users of `[admin] users`. It speaks the simple
//! query protocol and answers PgBouncer's commands with PgBouncer's columns, pgpilot's own
//! columns after them, and pgpilot's own commands (`SHOW BACKENDS`, `SHOW EVENTS`).
//!
//! A console session asks every core for its figures through the core's inbox (each core
//! answers from its own state, so the data path shares nothing) and the control plane for the
//! backends' health; the answers come back in a [`crate::control::Mailbox`].

pub mod command;
mod report;
mod show;
pub mod stats;

use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use pgpilot_protocol::encode::{self, ErrorFields};

use crate::control::{mailbox, ControlMsg, CoreMsg};
use crate::core::Core;
use command::{Command, Show};
pub use report::{
    BackendFigures, ClientCard, ClientFigures, CoreReport, EventRecord, PlaneReport, PoolFigures,
    ServerFigures, Serving, Waiting,
};
pub use show::{is_console, utc_seconds};
pub use stats::{CoreStats, DbStats, Totals};

/// How long the console waits for the cores and the control plane to answer.
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// Column types (OIDs), as PgBouncer declares them.
pub const TEXT: u32 = 25;
pub const INT4: u32 = 23;
pub const INT8: u32 = 20;
pub const NUMERIC: u32 = 1700;

/// A result set: typed columns and text values (`None` is NULL).
pub struct Table {
    pub columns: Vec<(&'static str, u32)>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    fn write(&self, out: &mut BytesMut) {
        encode::row_description(out, &self.columns);
        for row in &self.rows {
            let values: Vec<Option<&[u8]>> = row
                .iter()
                .map(|v| v.as_deref().map(str::as_bytes))
                .collect();
            encode::data_row(out, &values);
        }
        encode::command_complete(out, format!("SHOW {}", self.rows.len()).as_bytes());
    }
}

/// Answers one simple Query of the console into `out` (result sets, CommandComplete, errors;
/// the caller adds ReadyForQuery).
pub async fn answer(core: &Rc<Core>, sql: &str, out: &mut BytesMut) {
    let commands = match command::parse(sql) {
        Ok(c) if c.is_empty() => return encode::empty_query_response(out),
        Ok(c) => c,
        Err(r) => return encode::error_response(out, &ErrorFields::error(r.code, r.message)),
    };
    for c in commands {
        match c {
            Command::Set => encode::command_complete(out, b"SET"),
            Command::Reload => {
                core.tell_control(ControlMsg::Reload);
                encode::command_complete(out, b"RELOAD");
            }
            Command::Shutdown => {
                log::info!("SHUTDOWN from the admin console");
                core.tell_control(ControlMsg::Shutdown);
                encode::command_complete(out, b"SHUTDOWN");
            }
            Command::Detach(name) => {
                if let Err(e) = override_by_hand(core, name, true).await {
                    return encode::error_response(out, &e);
                }
                encode::command_complete(out, b"DETACH");
            }
            Command::Attach(name) => {
                if let Err(e) = override_by_hand(core, name, false).await {
                    return encode::error_response(out, &e);
                }
                encode::command_complete(out, b"ATTACH");
            }
            Command::Pause(database) => {
                let scope = scope_text(&database);
                let pause = CoreMsg::Pause {
                    database: database.clone(),
                    pause: true,
                };
                let done = operator(core, "paused", format!("PAUSE{scope}"), pause).await;
                if let Err(e) = done.and(drained(core, database.as_deref()).await) {
                    return encode::error_response(out, &e);
                }
                encode::command_complete(out, b"PAUSE");
            }
            Command::Resume(database) => {
                let scope = scope_text(&database);
                let resume = CoreMsg::Pause {
                    database,
                    pause: false,
                };
                if let Err(e) = operator(core, "resumed", format!("RESUME{scope}"), resume).await {
                    return encode::error_response(out, &e);
                }
                encode::command_complete(out, b"RESUME");
            }
            Command::Kill(database) => {
                let cause = format!("KILL {database}");
                if let Err(e) = operator(core, "killed", cause, CoreMsg::Kill(database)).await {
                    return encode::error_response(out, &e);
                }
                encode::command_complete(out, b"KILL");
            }
            Command::Reconnect(database) => {
                let scope = scope_text(&database);
                let reconnect = CoreMsg::Reconnect(database);
                let done = operator(core, "reconnect", format!("RECONNECT{scope}"), reconnect);
                if let Err(e) = done.await {
                    return encode::error_response(out, &e);
                }
                encode::command_complete(out, b"RECONNECT");
            }
            Command::Show(what) => match table(core, what).await {
                Ok(t) => t.write(out),
                Err(e) => {
                    encode::error_response(out, &e);
                    return;
                }
            },
        }
    }
}

async fn table(core: &Rc<Core>, what: Show) -> Result<Table, ErrorFields> {
    let config = &core.config();
    Ok(match what {
        Show::Version => show::version(),
        Show::Config => show::config(config),
        Show::Users => show::users(config),
        Show::Databases => show::databases(config, &gather(core).await?),
        Show::Pools => show::pools(config, &gather(core).await?),
        Show::Clients => show::clients_table(&core.state(), &gather(core).await?),
        Show::Lists => show::lists(config, &gather(core).await?),
        Show::Backends => show::backends(&ask_plane(core).await?),
        Show::Events => show::events(&ask_plane(core).await?),
        Show::Stats => show::stats(&gather(core).await?, show::StatsKind::Both),
        Show::StatsTotals => show::stats(&gather(core).await?, show::StatsKind::Totals),
        Show::StatsAverages => show::stats(&gather(core).await?, show::StatsKind::Averages),
        Show::Routes => show::routes(&gather(core).await?),
        Show::Servers => show::servers(&core.state(), &gather(core).await?),
        Show::Pins => show::pins(&core.state(), &gather(core).await?),
    })
}

/// ` app` for a command about database `app`, nothing for one about all.
fn scope_text(database: &Option<String>) -> String {
    database.as_ref().map_or(String::new(), |d| format!(" {d}"))
}

/// Passes an operator's command to every core, and has the control plane record it as an
/// event. Returns once every core has applied it: a core's inbox is first in, first out, so
/// its answer to a report asked after the command comes after the command.
async fn operator(
    core: &Rc<Core>,
    event: &'static str,
    command: String,
    then: CoreMsg,
) -> Result<(), ErrorFields> {
    for peer in core.peers() {
        let _ = peer.send(then.clone());
    }
    let cause = format!("{command} from the admin console");
    if !core.tell_control(ControlMsg::Note { event, cause }) {
        log::warn!("{command}: the control plane is gone");
    }
    gather(core).await.map(|_| ())
}

/// How long PAUSE waits for the transactions under way.
const PAUSE_WAIT: Duration = Duration::from_secs(60);

/// Waits until every core is paused and no backend connection of `database` (or any) is in
/// use: the transactions under way have finished.
async fn drained(core: &Rc<Core>, database: Option<&str>) -> Result<(), ErrorFields> {
    let deadline = std::time::Instant::now() + PAUSE_WAIT;
    loop {
        let reports = gather(core).await?;
        let busy: usize = (reports.iter().flat_map(|r| &r.pools))
            .filter(|p| database.is_none_or(|d| d == p.database))
            .map(|p| p.active)
            .sum();
        let paused = |r: &CoreReport| {
            r.paused.0 || database.is_some_and(|d| r.paused.1.iter().any(|p| p == d))
        };
        if busy == 0 && reports.iter().all(paused) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(ErrorFields::error(
                "57014",
                format!(
                    "PAUSE did not complete: {busy} backend connection(s) still in use after {} s; \
                     the pause holds until RESUME",
                    PAUSE_WAIT.as_secs()
                ),
            ));
        }
        monoio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every core's report, this one's included.
async fn gather(core: &Rc<Core>) -> Result<Vec<CoreReport>, ErrorFields> {
    let (tx, rx) = mailbox();
    let asked = core
        .peers()
        .iter()
        .filter(|p| p.send(CoreMsg::Report(tx.clone())).is_ok())
        .count();
    drop(tx);
    let mut reports = Vec::with_capacity(asked);
    let collect = async {
        while reports.len() < asked {
            match rx.recv().await {
                Some(r) => reports.push(r),
                None => break,
            }
        }
    };
    if monoio::time::timeout(ANSWER_WAIT, collect).await.is_err() || reports.len() < asked {
        return Err(ErrorFields::error(
            "58000",
            format!("{} of {asked} cores answered in time", reports.len()),
        ));
    }
    reports.sort_by_key(|r| r.core);
    Ok(reports)
}

/// DETACH (`detach`) or ATTACH, as the control plane answers it.
async fn override_by_hand(core: &Rc<Core>, name: String, detach: bool) -> Result<(), ErrorFields> {
    let (reply, rx) = mailbox();
    let unanswered = || ErrorFields::error("58000", "the control plane did not answer in time");
    if !core.tell_control(ControlMsg::Override {
        name,
        detach,
        reply,
    }) {
        return Err(unanswered());
    }
    match monoio::time::timeout(ANSWER_WAIT, rx.recv()).await {
        Ok(Some(Ok(()))) => Ok(()),
        Ok(Some(Err((code, message)))) => Err(ErrorFields::error(code, message)),
        _ => Err(unanswered()),
    }
}

/// What the control plane sees.
async fn ask_plane(core: &Rc<Core>) -> Result<PlaneReport, ErrorFields> {
    let (tx, rx) = mailbox();
    let unanswered = || ErrorFields::error("58000", "the control plane did not answer in time");
    if !core.tell_control(ControlMsg::Describe(tx)) {
        return Err(unanswered());
    }
    match monoio::time::timeout(ANSWER_WAIT, rx.recv()).await {
        Ok(Some(report)) => Ok(report),
        _ => Err(unanswered()),
    }
}
