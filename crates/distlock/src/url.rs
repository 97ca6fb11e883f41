//! Choosing a backend from a URL at run time.

use std::sync::Arc;

use crate::backend::Backend;
use crate::backend::memory::MemoryBackend;
use crate::error::{Error, Result};

/// Schemes of backends that live behind cargo features, with the feature.
const FEATURE_SCHEMES: &[(&str, &str)] = &[
    ("redis", "redis"),
    ("rediss", "redis"),
    ("etcd", "etcd"),
    ("file", "file"),
];

/// The backend a URL names, and the `namespace` query parameter if given.
pub(crate) async fn backend_from_url(raw: &str) -> Result<(Arc<dyn Backend>, Option<String>)> {
    let url = url::Url::parse(raw).map_err(|e| invalid(raw, e.to_string()))?;
    let mut namespace = None;
    for (name, value) in url.query_pairs() {
        match &*name {
            "namespace" => namespace = Some(value.into_owned()),
            other => return Err(invalid(raw, format!("unknown query parameter {other:?}"))),
        }
    }
    let backend: Arc<dyn Backend> = match url.scheme() {
        "memory" => Arc::new(MemoryBackend::new()),
        #[cfg(all(feature = "file", unix))]
        "file" => {
            let dir = match url.host_str() {
                None | Some("") | Some("localhost") => url.to_file_path().ok(),
                Some(_) => None,
            }
            .ok_or_else(|| {
                invalid(
                    raw,
                    "a file:// URL names an absolute directory on this host, like file:///run/user/1000/distlock".into(),
                )
            })?;
            Arc::new(crate::backend::file::FileBackend::open(dir)?)
        }
        #[cfg(feature = "redis")]
        "redis" | "rediss" => {
            // The query is ours (`namespace`); redis-rs sees the rest.
            let mut store_url = url.clone();
            store_url.set_query(None);
            Arc::new(crate::backend::redis::RedisBackend::connect(store_url.as_str()).await?)
        }
        scheme => {
            let reason = match FEATURE_SCHEMES.iter().find(|(s, _)| *s == scheme) {
                Some((_, feature)) => format!(
                    "the {scheme}:// backend is not compiled in; enable distlock's cargo feature `{feature}`"
                ),
                None => format!(
                    "unknown scheme {scheme:?}; expected memory://, redis://, rediss://, etcd:// or file://"
                ),
            };
            return Err(invalid(raw, reason));
        }
    };
    Ok((backend, namespace))
}

fn invalid(raw: &str, reason: String) -> Error {
    // Never echo a password back into logs.
    let shown = match url::Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => raw.to_owned(),
    };
    Error::InvalidUrl { url: shown, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(url: &str) -> String {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        match runtime.block_on(backend_from_url(url)) {
            Err(Error::InvalidUrl { url, reason }) => format!("{url} | {reason}"),
            other => panic!("expected InvalidUrl, got {other:?}"),
        }
    }

    #[test]
    fn compiled_out_backends_name_their_feature() {
        assert!(reason("etcd://127.0.0.1:2379").contains("cargo feature `etcd`"));
        #[cfg(not(feature = "redis"))]
        assert!(reason("rediss://h:6379").contains("cargo feature `redis`"));
    }

    #[cfg(not(feature = "file"))]
    #[test]
    fn a_compiled_out_file_backend_names_its_feature() {
        assert!(reason("file:///tmp/locks").contains("cargo feature `file`"));
    }

    #[cfg(all(feature = "file", unix))]
    #[test]
    fn file_urls_name_a_local_directory() {
        assert!(reason("file://otherhost/tmp/x").contains("absolute directory on this host"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("distlock-url-{}", std::process::id()));
        let url = format!("file://{}?namespace=ops", dir.display());
        let (backend, namespace) = runtime.block_on(backend_from_url(&url)).unwrap();
        assert_eq!(backend.name(), "file");
        assert_eq!(namespace.as_deref(), Some("ops"));
        assert!(dir.is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_urls_are_explained_without_leaking_passwords() {
        assert!(reason("gopher://x").contains("unknown scheme \"gopher\""));
        assert!(reason("not a url").contains("relative URL"));
        let shown = reason("gopher://user:hunter2@host/");
        assert!(
            !shown.contains("hunter2") && shown.contains("***"),
            "{shown}"
        );
        assert!(reason("memory://?colour=red").contains("unknown query parameter"));
    }
}
