//! The run-time parameters (GUCs) a client asked for at startup, and the SQL that applies
//! them to whichever backend serves the client.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use pgpilot_protocol::classify::SettingChange;

/// Startup parameters that are not GUCs.
const NOT_GUCS: &[&str] = &["user", "database", "options", "replication"];

/// A client's GUCs, sorted by name, with a hash that identifies the set (0 = empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gucs {
    /// `(name, value)` with lower-case names, sorted, last setting of a name wins.
    pub list: Vec<(String, String)>,
    /// Identifies the set; a backend remembers the hash of the set applied to it.
    pub hash: u64,
}

impl Gucs {
    /// Collects GUCs from startup parameters, including `-c name=value` inside `options`.
    pub fn from_startup(params: &[(&str, &str)]) -> Result<Gucs, String> {
        let mut list: Vec<(String, String)> = Vec::new();
        let mut add = |name: &str, value: &str| {
            let name = name.to_ascii_lowercase().replace('-', "_");
            list.retain(|(n, _)| *n != name);
            list.push((name, value.to_owned()));
        };
        for (name, value) in params {
            if *name == "options" {
                for (n, v) in parse_options(value)? {
                    add(&n, &v);
                }
            } else if !NOT_GUCS.contains(name) && !name.starts_with("_pq_.") {
                add(name, value);
            }
        }
        Ok(Gucs::from_list(list))
    }

    fn from_list(mut list: Vec<(String, String)>) -> Gucs {
        list.sort();
        let hash = if list.is_empty() {
            0
        } else {
            let mut h = DefaultHasher::new();
            list.hash(&mut h);
            h.finish().clamp(1, u64::MAX - 1)
        };
        Gucs { list, hash }
    }

    /// The startup set `base` with the session's own `SET`s laid over it.
    pub fn overlay(base: &Gucs, overrides: &[(String, String)]) -> Gucs {
        let mut list: Vec<(String, String)> = base
            .list
            .iter()
            .filter(|(n, _)| !overrides.iter().any(|(o, _)| o == n))
            .cloned()
            .collect();
        list.extend(overrides.iter().cloned());
        Gucs::from_list(list)
    }

    /// SQL that brings a backend from the set with hash `applied` to this one. Values go
    /// through `set_config`, which parses them as the startup packet would (lists included).
    pub fn setup_sql(&self, applied: u64) -> String {
        let mut sql = String::new();
        if applied != 0 {
            sql.push_str("RESET ALL;");
        }
        sql.push_str(&set_sql(self.list.iter()));
        sql
    }

    /// The startup values of the settings a `RESET name`, `RESET ALL` or `DISCARD ALL` (in
    /// `changes`, in order) sent back to the server's defaults, where a later `SET` of the
    /// same unit did not replace them: PostgreSQL resets to the startup packet's values.
    pub fn reset_to_startup(&self, changes: &[SettingChange]) -> Vec<(String, String)> {
        let mut back: Vec<&(String, String)> = Vec::new();
        for change in changes {
            match change {
                SettingChange::Set { name, .. } => back.retain(|(n, _)| n != name),
                SettingChange::Reset { name } => {
                    back.retain(|(n, _)| n != name);
                    back.extend(self.list.iter().find(|(n, _)| n == name));
                }
                SettingChange::ResetAll => back = self.list.iter().collect(),
            }
        }
        back.into_iter().cloned().collect()
    }
}

/// One `SELECT` of `set_config` calls for these settings (empty for none).
pub fn set_sql<'a>(settings: impl Iterator<Item = &'a (String, String)>) -> String {
    let calls: Vec<String> = settings
        .map(|(n, v)| {
            format!(
                "pg_catalog.set_config({}, {}, false)",
                quote_literal(n),
                quote_literal(v)
            )
        })
        .collect();
    if calls.is_empty() {
        return String::new();
    }
    format!("SELECT {}", calls.join(", "))
}

/// A string literal that means the same whatever `standard_conforming_strings` says.
pub(crate) fn quote_literal(s: &str) -> String {
    let quoted = s.replace('\'', "''");
    if s.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// Splits the `options` startup parameter: `-c a=b`, `-ca=b`, `--a=b`, with `\ ` for a space.
fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next()
                .ok_or_else(|| "option -c needs name=value".to_owned())?
        } else if let Some(rest) = w.strip_prefix("--").or_else(|| w.strip_prefix("-c")) {
            rest.to_owned()
        } else {
            return Err(format!(
                "invalid command-line argument for server process: {w}"
            ));
        };
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("invalid option {setting:?}: expected name=value"))?;
        out.push((name.to_owned(), value.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_params_become_gucs() {
        let g = Gucs::from_startup(&[
            ("user", "app"),
            ("database", "app"),
            ("application_name", "psql"),
            (
                "options",
                "-c search_path=a\\ b --statement-timeout=5s -cwork_mem=64kB",
            ),
            ("DateStyle", "ISO"),
        ])
        .unwrap();
        let names: Vec<_> = g.list.iter().map(|(n, v)| format!("{n}={v}")).collect();
        assert_eq!(
            names,
            [
                "application_name=psql",
                "datestyle=ISO",
                "search_path=a b",
                "statement_timeout=5s",
                "work_mem=64kB"
            ]
        );
        assert_ne!(g.hash, 0);
        assert_eq!(
            g.setup_sql(0),
            "SELECT pg_catalog.set_config('application_name', 'psql', false), \
             pg_catalog.set_config('datestyle', 'ISO', false), pg_catalog.set_config('search_path', 'a b', false), \
             pg_catalog.set_config('statement_timeout', '5s', false), pg_catalog.set_config('work_mem', '64kB', false)"
        );
        assert!(g.setup_sql(7).starts_with("RESET ALL;"));
        assert_eq!(Gucs::from_startup(&[("user", "u")]).unwrap().hash, 0);
    }

    #[test]
    fn overrides_replace_startup_values() {
        let base = Gucs::from_startup(&[("application_name", "a"), ("TimeZone", "UTC")]).unwrap();
        let over = [
            ("timezone".to_owned(), "Asia/Tokyo".to_owned()),
            ("search_path".to_owned(), "x".to_owned()),
        ];
        let g = Gucs::overlay(&base, &over);
        let names: Vec<_> = g.list.iter().map(|(n, v)| format!("{n}={v}")).collect();
        assert_eq!(
            names,
            ["application_name=a", "search_path=x", "timezone=Asia/Tokyo"]
        );
        assert_eq!(Gucs::overlay(&base, &[]), base);
        assert_ne!(g.hash, base.hash);
    }

    #[test]
    fn resets_go_back_to_startup_values_unless_set_again() {
        let g = Gucs::from_startup(&[("DateStyle", "German"), ("TimeZone", "UTC")]).unwrap();
        let set = |n: &str| SettingChange::Set {
            name: n.into(),
            value: "x".into(),
        };
        let reset = |n: &str| SettingChange::Reset { name: n.into() };
        let names = |c: &[SettingChange]| -> Vec<String> {
            g.reset_to_startup(c)
                .into_iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect()
        };
        assert_eq!(
            names(&[SettingChange::ResetAll]),
            ["datestyle=German", "timezone=UTC"]
        );
        assert_eq!(names(&[reset("datestyle")]), ["datestyle=German"]);
        assert!(names(&[reset("work_mem")]).is_empty());
        assert_eq!(
            names(&[SettingChange::ResetAll, set("timezone")]),
            ["datestyle=German"]
        );
        assert!(names(&[set("datestyle")]).is_empty());
        assert_eq!(
            set_sql(g.list.iter().take(1)),
            "SELECT pg_catalog.set_config('datestyle', 'German', false)"
        );
        assert_eq!(set_sql(std::iter::empty()), "");
    }

    #[test]
    fn quotes_cannot_escape() {
        let g = Gucs::from_startup(&[("application_name", "x'; DROP TABLE t; --")]).unwrap();
        assert_eq!(
            g.setup_sql(0),
            "SELECT pg_catalog.set_config('application_name', 'x''; DROP TABLE t; --', false)"
        );
    }

    #[test]
    fn backslashes_survive_either_string_syntax() {
        let g = Gucs::from_startup(&[("application_name", "a\\b")]).unwrap();
        assert_eq!(
            g.setup_sql(0),
            "SELECT pg_catalog.set_config('application_name', E'a\\\\b', false)"
        );
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(Gucs::from_startup(&[("options", "-c")]).is_err());
        assert!(Gucs::from_startup(&[("options", "-x y")]).is_err());
        assert!(Gucs::from_startup(&[("options", "-c novalue")]).is_err());
    }
}
