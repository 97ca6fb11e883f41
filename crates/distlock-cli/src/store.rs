//! Which store `distlock` talks to: the `--backend` URL, or a private
//! per-user directory of the file backend; and the stores this build has.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use distlock::Locker;

use crate::exit::{self, Failure};

/// A store URL scheme, whether this build speaks it, its syntax and what it
/// is for.
struct Scheme {
    schemes: &'static [&'static str],
    built_in: bool,
    syntax: &'static str,
    what: &'static str,
    rebuild: &'static str,
}

const SCHEMES: &[Scheme] = &[
    Scheme {
        schemes: &["file"],
        built_in: cfg!(feature = "file"),
        syntax: "file:///dir",
        what: "one host: flocks in a directory, no server (the default store)",
        rebuild: "rebuild with --features file",
    },
    Scheme {
        schemes: &["redis", "rediss"],
        built_in: cfg!(feature = "redis"),
        syntax: "redis://[user:password@]host:port[/db], rediss:// (TLS)",
        what: "a fleet, through one Redis server",
        rebuild: "rebuild with --features redis",
    },
    Scheme {
        schemes: &[
            "redis+sentinel",
            "rediss+sentinel",
            "redis+cluster",
            "rediss+cluster",
        ],
        built_in: cfg!(feature = "redis"),
        syntax: "redis+sentinel://host:26379[,host:port...]/MASTER_NAME, redis+cluster://host:port[,host:port...] (rediss+ for TLS; ?replicas=N)",
        what: "a fleet, through replicated Redis: a Sentinel-managed master (followed across failovers) or a Redis Cluster",
        rebuild: "rebuild with --features redis",
    },
    Scheme {
        schemes: &["etcd", "etcds"],
        built_in: cfg!(feature = "etcd"),
        syntax: "etcd://[user:password@]host:port[,host:port...], etcds:// (TLS)",
        what: "a fleet, through an etcd cluster",
        rebuild: "reinstall with `apt-get install protobuf-compiler libprotobuf-dev && cargo install --path crates/distlock-cli --features etcd` (etcd's client needs protoc and the well-known .proto files at build time)",
    },
    Scheme {
        schemes: &["memory"],
        built_in: true,
        syntax: "memory://",
        what: "this process only, for trying things out",
        rebuild: "",
    },
];

/// The `--help` paragraph listing the stores this build speaks, and those
/// it would need another build for.
pub fn help() -> String {
    let mut text = String::from(
        "Stores this build speaks (--backend URL or DISTLOCK_URL; add ?namespace=NAME to keep applications apart):\n",
    );
    for scheme in SCHEMES.iter().filter(|s| s.built_in) {
        text.push_str(&format!("  {}\n      {}\n", scheme.syntax, scheme.what));
    }
    let missing: Vec<&Scheme> = SCHEMES.iter().filter(|s| !s.built_in).collect();
    if !missing.is_empty() {
        text.push_str("Not built in:\n");
        for scheme in missing {
            text.push_str(&format!("  {}: {}\n", scheme.syntax, scheme.rebuild));
        }
    }
    text
}

/// A clear usage error for a URL whose store this build lacks; `None` when
/// the URL is for the library to judge.
fn not_built_in(url: &str) -> Option<Failure> {
    let scheme = url.split_once("://")?.0.to_ascii_lowercase();
    let missing = SCHEMES
        .iter()
        .find(|s| !s.built_in && s.schemes.contains(&scheme.as_str()))?;
    Some(Failure::new(
        exit::USAGE,
        format!(
            "{scheme}:// is not built into this distlock: {}",
            missing.rebuild
        ),
    ))
}

/// The locker for `--backend` (or `DISTLOCK_URL`), or for the default store.
pub async fn locker(url: Option<String>) -> Result<Locker, Failure> {
    let url = match url {
        Some(url) if !url.is_empty() => url,
        _ => default_url()?,
    };
    if let Some(failure) = not_built_in(&url) {
        return Err(failure);
    }
    Ok(Locker::from_url(&url).await?)
}

/// The default store: a private per-user directory.
fn default_url() -> Result<String, Failure> {
    if !cfg!(feature = "file") {
        return Err(Failure::new(
            exit::USAGE,
            "no --backend given, and the default file store is not built into this distlock",
        ));
    }
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(runtime) if runtime.is_absolute() => runtime.join("distlock"),
        _ => PathBuf::from(format!("/tmp/distlock-{}", nix::unistd::geteuid())),
    };
    private_dir(&dir).map_err(|e| {
        Failure::new(
            exit::UNAVAILABLE,
            format!("cannot use the lock directory {}: {e}", dir.display()),
        )
    })?;
    url::Url::from_directory_path(&dir)
        .map(String::from)
        .map_err(|()| Failure::new(exit::SOFTWARE, format!("{} is not absolute", dir.display())))
}

/// Creates `dir` with mode 0700 if missing, and refuses one that another
/// user could have planted (/tmp is shared): it must be a real directory,
/// owned by us, writable by nobody else.
fn private_dir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other("not a directory (or a symbolic link)"));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(io::Error::other(format!("owned by uid {}", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(io::Error::other("writable by other users"));
    }
    Ok(())
}
