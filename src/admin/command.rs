//! The console's commands, read from the text of a simple Query: PgBouncer's syntax (case does
//! not matter, a trailing `;` is allowed, several commands may share one query).

/// One console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SHOW what`.
    Show(Show),
    /// `SET ...`: accepted and ignored, as PgBouncer's console does (drivers send one at connect).
    Set,
    /// `RELOAD`: read the config file again, as SIGHUP does.
    Reload,
    /// `SHUTDOWN`: stop the proxy, as SIGTERM does.
    Shutdown,
    /// `DETACH name`: take a replica out of the rotation until `ATTACH name`.
    Detach(String),
    /// `ATTACH name`: undo a `DETACH` (the checks decide again).
    Attach(String),
    /// `PAUSE [db]`: new work waits; answered once the transactions under way have finished.
    Pause(Option<String>),
    /// `RESUME [db]`: the work that waits goes on.
    Resume(Option<String>),
    /// `KILL db`: every client of the database is ended now.
    Kill(String),
    /// `RECONNECT [db]`: backend connections are closed once released, and made anew.
    Reconnect(Option<String>),
}

/// What `SHOW` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Pools,
    Clients,
    Databases,
    Lists,
    Users,
    Config,
    Version,
    Backends,
    Events,
    Stats,
    StatsTotals,
    StatsAverages,
    Routes,
    Servers,
    Pins,
}

impl Show {
    const ALL: [(&'static str, Show); 15] = [
        ("POOLS", Show::Pools),
        ("CLIENTS", Show::Clients),
        ("DATABASES", Show::Databases),
        ("LISTS", Show::Lists),
        ("USERS", Show::Users),
        ("CONFIG", Show::Config),
        ("VERSION", Show::Version),
        ("BACKENDS", Show::Backends),
        ("EVENTS", Show::Events),
        ("STATS", Show::Stats),
        ("STATS_TOTALS", Show::StatsTotals),
        ("STATS_AVERAGES", Show::StatsAverages),
        ("ROUTES", Show::Routes),
        ("SERVERS", Show::Servers),
        ("PINS", Show::Pins),
    ];

    /// The names `SHOW` takes, for the error that lists them.
    pub fn names() -> String {
        let names: Vec<&str> = Show::ALL.iter().map(|(n, _)| *n).collect();
        names.join(", ")
    }
}

/// A command the console refuses: SQLSTATE and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: &'static str,
    pub message: String,
}

/// The commands of one query, in order; an empty query gives none.
pub fn parse(sql: &str) -> Result<Vec<Command>, Refused> {
    sql.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_one)
        .collect()
}

fn parse_one(text: &str) -> Result<Command, Refused> {
    let mut words = text.split_ascii_whitespace();
    let verb = words.next().unwrap_or_default().to_ascii_uppercase();
    let rest: Vec<&str> = words.collect();
    let syntax = || Refused {
        code: "42601",
        message: format!(
            "invalid command {text:?}; the console takes SHOW {{{}}}, SET, RELOAD, SHUTDOWN, \
             DETACH name, ATTACH name, PAUSE [db], RESUME [db], KILL db, RECONNECT [db]",
            Show::names()
        ),
    };
    match (verb.as_str(), rest.as_slice()) {
        ("SHOW", [what]) => {
            let what = what.to_ascii_uppercase();
            Show::ALL
                .iter()
                .find(|(n, _)| *n == what)
                .map(|(_, s)| Command::Show(*s))
                .ok_or_else(syntax)
        }
        ("SET", [_, ..]) => Ok(Command::Set),
        ("RELOAD", []) => Ok(Command::Reload),
        ("SHUTDOWN", []) => Ok(Command::Shutdown),
        ("DETACH", [name]) => Ok(Command::Detach(unquote(name))),
        ("PAUSE", []) => Ok(Command::Pause(None)),
        ("PAUSE", [db]) => Ok(Command::Pause(Some(unquote(db)))),
        ("RESUME", []) => Ok(Command::Resume(None)),
        ("RESUME", [db]) => Ok(Command::Resume(Some(unquote(db)))),
        ("KILL", [db]) => Ok(Command::Kill(unquote(db))),
        ("RECONNECT", []) => Ok(Command::Reconnect(None)),
        ("RECONNECT", [db]) => Ok(Command::Reconnect(Some(unquote(db)))),
        ("ATTACH", [name]) => Ok(Command::Attach(unquote(name))),
        _ => Err(syntax()),
    }
}

/// A backend name as written, with the double quotes of an SQL identifier taken off.
fn unquote(name: &str) -> String {
    name.strip_prefix('"')
        .and_then(|n| n.strip_suffix('"'))
        .unwrap_or(name)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_as_pgbouncer_reads_them() {
        assert_eq!(parse("SHOW POOLS"), Ok(vec![Command::Show(Show::Pools)]));
        assert_eq!(
            parse("  show clients ;"),
            Ok(vec![Command::Show(Show::Clients)])
        );
        assert_eq!(
            parse("show version; SHOW backends;"),
            Ok(vec![
                Command::Show(Show::Version),
                Command::Show(Show::Backends)
            ])
        );
        assert_eq!(parse("SET extra_float_digits = 3"), Ok(vec![Command::Set]));
        assert_eq!(parse("reload"), Ok(vec![Command::Reload]));
        assert_eq!(
            parse("pause; PAUSE app; resume app; KILL app; RECONNECT"),
            Ok(vec![
                Command::Pause(None),
                Command::Pause(Some("app".into())),
                Command::Resume(Some("app".into())),
                Command::Kill("app".into()),
                Command::Reconnect(None)
            ])
        );
        assert_eq!(
            parse("DETACH replica1; attach \"Replica-2\""),
            Ok(vec![
                Command::Detach("replica1".into()),
                Command::Attach("Replica-2".into())
            ])
        );
        assert_eq!(parse(""), Ok(vec![]));
        assert_eq!(parse(" ; "), Ok(vec![]));
    }

    #[test]
    fn anything_else_is_a_syntax_error_that_says_what_is_taken() {
        for bad in [
            "SHOW",
            "SHOW NOTHING",
            "SHOW POOLS CLIENTS",
            "SELECT 1",
            "SET",
            "RELOAD now",
            "DETACH",
            "ATTACH a b",
            "KILL",
            "PAUSE a b",
        ] {
            let e = parse(bad).expect_err(bad);
            assert_eq!(e.code, "42601", "{bad}");
            assert!(e.message.contains("SHOW {POOLS"), "{}", e.message);
        }
    }
}
