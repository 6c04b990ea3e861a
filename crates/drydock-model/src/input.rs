//! Validation of user input that reaches a shell, git or the filesystem.
//! Pure functions: they decide, callers act.

/// A path inside a lease's directory: relative, no `..`, no empty or `.`
/// components, no NUL, at most 1024 bytes. Returns it normalized
/// (`a//b/` → `a/b`); the empty string means the lease directory itself.
pub fn relative_path(path: &str) -> Result<String, String> {
    if path.len() > 1024 {
        return Err(format!("path is {} bytes long (at most 1024)", path.len()));
    }
    if path.contains('\0') {
        return Err("path contains a NUL byte".into());
    }
    if path.starts_with('/') {
        return Err(format!(
            "path {path:?} must be relative to the lease's directory"
        ));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => continue,
            ".." => return Err(format!("path {path:?} must not contain `..`")),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, at most 128 bytes.
pub fn env_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = name.len() <= 128
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid environment variable name"))
    }
}

/// An argv: at least one word, no NUL bytes, at most 256 KiB in all.
pub fn argv(argv: &[String]) -> Result<(), String> {
    if argv.is_empty() || argv[0].is_empty() {
        return Err("no command given".into());
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err("an argument contains a NUL byte".into());
    }
    let total: usize = argv.iter().map(|a| a.len() + 1).sum();
    if total > 256 * 1024 {
        return Err(format!(
            "the command is {total} bytes long (at most 256 KiB)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_lease_directory() {
        assert_eq!(relative_path("").unwrap(), "");
        assert_eq!(relative_path("src//lib/./x.rs").unwrap(), "src/lib/x.rs");
        for bad in ["/etc/passwd", "../x", "a/../../b", "a/..", "x\0y"] {
            assert!(relative_path(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(relative_path(&"a/".repeat(600)).is_err());
    }

    #[test]
    fn env_names_and_argv_are_checked() {
        assert!(env_name("PATH").is_ok() && env_name("_x1").is_ok());
        for bad in ["", "1A", "A-B", "A B", "A=B", "$(rm)"] {
            assert!(env_name(bad).is_err(), "{bad:?}");
        }
        assert!(argv(&[]).is_err());
        assert!(argv(&["".into()]).is_err());
        assert!(argv(&["echo".into(), "a\0b".into()]).is_err());
        assert!(
            argv(&["echo".into(), "$(rm -rf /)".into()]).is_ok(),
            "quoting, not refusal, handles shell syntax"
        );
    }
}
