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

/// A repository name as configured on a working-copy blueprint and asked
/// for by a lease: letters, digits, `.`, `_`, `-`; not starting with `-` or
/// `.`; at most 64 bytes. It becomes a directory name.
pub fn repository_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['-', '.'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "repository name {name:?} must be letters, digits, `.`, `_` or `-`, not starting with `-` or `.`"
        ))
    }
}

/// A commit id: 7 to 64 hexadecimal digits.
pub fn commit(id: &str) -> Result<(), String> {
    if (7..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!("commit {id:?} must be 7 to 64 hexadecimal digits"))
    }
}

/// A branch or tag name, by git's rules (`git check-ref-format --branch`)
/// and never option-like: no leading `-`, no `..`, `@{`, `//`, control
/// characters, space or any of `~^:?*[\`, not ending in `/`, `.` or
/// `.lock`, at most 255 bytes.
pub fn git_ref(name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name.len() > 255
        || name.starts_with(['-', '/', '.'])
        || name.ends_with(['/', '.'])
        || name.ends_with(".lock")
        || name.contains("..")
        || name.contains("@{")
        || name.contains("//")
        || name.contains("/.")
        || name == "@"
        || name
            .chars()
            .any(|c| c.is_control() || c == ' ' || "~^:?*[\\".contains(c));
    if bad {
        Err(format!("{name:?} is not a valid branch or tag name"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod git_tests {
    use super::*;

    #[test]
    fn git_input_is_validated() {
        assert!(repository_name("app").is_ok() && repository_name("my-lib.rs_2").is_ok());
        for bad in ["", "-x", ".git", "../x", "a/b", "a b", &"x".repeat(65)] {
            assert!(repository_name(bad).is_err(), "{bad:?}");
        }
        assert!(commit("deadbeef").is_ok() && commit(&"a".repeat(40)).is_ok());
        assert!(
            commit("abc").is_err()
                && commit("--upload-pack=x").is_err()
                && commit("g123456").is_err()
        );
        assert!(
            git_ref("main").is_ok() && git_ref("feature/x-1").is_ok() && git_ref("v1.2.3").is_ok()
        );
        for bad in [
            "--upload-pack=touch /tmp/x",
            "-b",
            "a..b",
            "a b",
            "x.lock",
            "a/",
            "@{u}",
            "a~1",
            "a^",
            "a:b",
            "a\nb",
            ".hidden",
            "x//y",
        ] {
            assert!(git_ref(bad).is_err(), "{bad:?}");
        }
    }
}
