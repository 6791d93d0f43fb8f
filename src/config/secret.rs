//! Secrets kept out of the config text: `${NAME}` takes an environment variable, and
//! `users[].password_file` reads a file. Errors name the variable or the file, never the secret.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Looks an environment variable up: the process environment, or a fixed set in tests.
pub(super) type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// A password file longer than this is not a password (a device, a misnamed dump).
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Where `users[i]`'s password comes from, as written.
pub(super) struct PasswordSource<'a> {
    /// `password`: the text, with `${NAME}` expanded.
    pub password: Option<&'a str>,
    /// `password_file`: a path (with `${NAME}` expanded) whose content is the password.
    pub password_file: Option<&'a str>,
}

/// The password of `users[i]`, or the key and problem that stop it.
pub(super) fn resolve_password(
    i: usize,
    src: &PasswordSource<'_>,
    config_path: &Path,
    env: Env<'_>,
) -> Result<String, (String, String)> {
    match (src.password, src.password_file) {
        (Some(text), None) => expand(text, env).map_err(|p| (format!("users[{i}].password"), p)),
        (None, Some(file)) => {
            let key = || format!("users[{i}].password_file");
            let file = expand(file, env).map_err(|p| (key(), p))?;
            read_password_file(&relative_to(config_path, &file)).map_err(|p| (key(), p))
        }
        (Some(_), Some(_)) => Err((
            format!("users[{i}]"),
            "has both password and password_file; give one".into(),
        )),
        (None, None) => Err((
            format!("users[{i}]"),
            "needs password or password_file".into(),
        )),
    }
}

/// Replaces every `${NAME}` with the environment variable NAME; `$$` is one `$`; any other
/// `$` stays as it is.
pub(super) fn expand(text: &str, env: Env<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            // The text around a bad reference may be a literal secret: it is not quoted back.
            let end = tail
                .find('}')
                .ok_or("`${` has no closing `}` (write `$$` for a literal `$`)")?;
            let name = &tail[..end];
            if !is_var_name(name) {
                return Err(
                    "`${...}` must hold an environment variable name (letters, digits, `_`)".into(),
                );
            }
            let value =
                env(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            let value = value
                .into_string()
                .map_err(|_| format!("environment variable {name} is not valid UTF-8"))?;
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A relative `file` starts at the config file's directory, not at wherever pgpilot was started.
pub(super) fn relative_to(config_path: &Path, file: &str) -> PathBuf {
    let file = Path::new(file);
    match config_path.parent() {
        Some(dir) if file.is_relative() => dir.join(file),
        _ => file.to_owned(),
    }
}

/// The content of a password file, without one trailing newline (`\n` or `\r\n`).
fn read_password_file(path: &Path) -> Result<String, String> {
    let cannot = |e: std::io::Error| format!("cannot read {}: {}", path.display(), words(&e));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "{} is longer than {MAX_FILE_BYTES} bytes",
            path.display()
        ));
    }
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{} is not valid UTF-8", path.display()))?;
    let password = match text.strip_suffix('\n') {
        Some(t) => t.strip_suffix('\r').unwrap_or(t),
        None => &text,
    };
    if password.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(password.to_owned())
}

/// An I/O error as the OS says it, without Rust's ` (os error N)` suffix.
fn words(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_env, ConfigError};

    fn env(name: &str) -> Option<OsString> {
        match name {
            "APP_PW" => Some("from-env".into()),
            "SECRETS" => Some(std::env::temp_dir().into_os_string()),
            _ => None,
        }
    }

    /// A config with `users` as written, checked against [`env`].
    fn parse(path: &Path, users: &str) -> Result<std::sync::Arc<crate::Config>, ConfigError> {
        let text = format!(
            "{users}\n[[backends]]\nname = \"p\"\nhost = \"127.0.0.1\"\nrole = \"primary\"\n"
        );
        parse_env(&text, path, &env)
    }

    fn one_user(line: &str) -> String {
        format!(
            "[[users]]\nname = \"other\"\npassword = \"x\"\n\n[[users]]\nname = \"app\"\n{line}\n"
        )
    }

    /// Removes a test's directory when the test ends.
    struct Cleanup(PathBuf);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A file in a directory of this test's own.
    fn file(test: &str, name: &str, content: &[u8]) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pgpilot-secret-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn expand_takes_variables_and_keeps_other_dollars() {
        assert_eq!(expand("${APP_PW}", &env).unwrap(), "from-env");
        assert_eq!(
            expand("a${APP_PW}b${APP_PW}", &env).unwrap(),
            "afrom-envbfrom-env"
        );
        assert_eq!(expand("pa$word$", &env).unwrap(), "pa$word$");
        assert_eq!(expand("x$$y$${APP_PW}", &env).unwrap(), "x$y${APP_PW}");
        assert_eq!(
            expand("${NOPE}", &env).unwrap_err(),
            "environment variable NOPE is not set"
        );
        for bad in [
            "secret${",
            "secret${APP_PW",
            "secret${1A}",
            "secret${}",
            "secret${A-B}",
        ] {
            let e = expand(bad, &env).unwrap_err();
            assert!(!e.contains("secret"), "{bad}: {e}");
        }
    }

    #[test]
    fn password_from_the_environment() {
        let c = parse(Path::new("t.toml"), &one_user("password = \"${APP_PW}\"")).unwrap();
        assert_eq!(c.users["app"].password, "from-env");
        assert!(!format!("{c:?}").contains("from-env"));
        let e = parse(Path::new("t.toml"), &one_user("password = \"${APP_PWX}\"")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml: users[1].password: environment variable APP_PWX is not set"
        );
    }

    #[test]
    fn password_from_a_file_loses_one_trailing_newline() {
        for (content, want) in [
            (&b"s3cret\n"[..], "s3cret"),
            (b"s3cret\r\n", "s3cret"),
            (b"s3cret", "s3cret"),
            (b"s3cret\n\n", "s3cret\n"),
            (b" spaced $${APP_PW} ", " spaced $${APP_PW} "),
        ] {
            let path = file("newline", "pw", content);
            let line = format!("password_file = {:?}", path.display().to_string());
            let c = parse(Path::new("t.toml"), &one_user(&line)).unwrap();
            assert_eq!(c.users["app"].password, want, "{content:?}");
            let _ = std::fs::remove_dir_all(path.parent().unwrap());
        }
    }

    #[test]
    fn password_file_paths_expand_and_start_at_the_config_directory() {
        let path = file("relative", "pw", b"rel\n");
        let _cleanup = Cleanup(path.parent().unwrap().to_owned());
        let config = path.with_file_name("pgpilot.toml");
        let c = parse(&config, &one_user("password_file = \"pw\"")).unwrap();
        assert_eq!(c.users["app"].password, "rel");
        let dir = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let line = format!("password_file = \"${{SECRETS}}/{dir}/pw\"");
        let c = parse(Path::new("t.toml"), &one_user(&line)).unwrap();
        assert_eq!(c.users["app"].password, "rel");
    }

    #[test]
    fn password_file_errors_name_the_key_and_the_file() {
        let e = parse(
            Path::new("t.toml"),
            &one_user("password_file = \"/nonexistent/x\""),
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "t.toml: users[1].password_file: cannot read /nonexistent/x: No such file or directory"
        );
        let empty = file("errors", "empty", b"\n");
        let dir = empty.parent().unwrap().to_owned();
        let _cleanup = Cleanup(dir.clone());
        let big = file("errors", "big", &vec![b'x'; 65 * 1024]);
        let latin1 = file("errors", "latin1", b"caf\xe9");
        for (path, problem) in [
            (&empty, format!("{} is empty", empty.display())),
            (
                &dir,
                format!("cannot read {}: Is a directory", dir.display()),
            ),
            (
                &big,
                format!("{} is longer than 65536 bytes", big.display()),
            ),
            (&latin1, format!("{} is not valid UTF-8", latin1.display())),
        ] {
            let line = format!("password_file = {:?}", path.display().to_string());
            let e = parse(Path::new("t.toml"), &one_user(&line)).unwrap_err();
            assert_eq!(
                (e.key.as_str(), e.problem),
                ("users[1].password_file", problem)
            );
        }
        let e = parse(
            Path::new("t.toml"),
            &one_user("password_file = \"${NOPE}/pw\""),
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "t.toml: users[1].password_file: environment variable NOPE is not set"
        );
    }

    #[test]
    fn exactly_one_of_password_and_password_file() {
        let both = one_user("password = \"a\"\npassword_file = \"/x\"");
        let e = parse(Path::new("t.toml"), &both).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml: users[1]: has both password and password_file; give one"
        );
        let e = parse(Path::new("t.toml"), &one_user("")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml: users[1]: needs password or password_file"
        );
    }
}
