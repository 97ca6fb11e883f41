//! Choosing a backend from a URL at run time.

use std::sync::Arc;

use crate::backend::Backend;
use crate::backend::memory::MemoryBackend;
use crate::error::{Error, Result};

/// Schemes of backends that live behind cargo features, with the feature.
const FEATURE_SCHEMES: &[(&str, &str)] = &[
    ("redis", "redis"),
    ("rediss", "redis"),
    ("redis+sentinel", "redis"),
    ("rediss+sentinel", "redis"),
    ("redis+cluster", "redis"),
    ("rediss+cluster", "redis"),
    ("etcd", "etcd"),
    ("etcds", "etcd"),
    ("file", "file"),
];

/// The backend a URL names, and the `namespace` query parameter if given.
pub(crate) async fn backend_from_url(raw: &str) -> Result<(Arc<dyn Backend>, Option<String>)> {
    #[cfg(feature = "etcd")]
    if let Some(parsed) = etcd::parse(raw)? {
        return etcd::connect(raw, parsed).await;
    }
    #[cfg(feature = "redis")]
    if redis::is_redis(raw) {
        let (builder, namespace) = redis::builder(raw)?;
        return Ok((Arc::new(builder.build().await?), namespace));
    }
    let url = url::Url::parse(raw).map_err(|e| invalid(raw, e.to_string()))?;
    let namespace = namespace_param(raw, url.query().unwrap_or_default())?;
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
        scheme => {
            let reason = match FEATURE_SCHEMES.iter().find(|(s, _)| *s == scheme) {
                Some((_, feature)) => format!(
                    "the {scheme}:// backend is not compiled in; enable distlock's cargo feature `{feature}`"
                ),
                None => format!(
                    "unknown scheme {scheme:?}; expected memory://, redis://, rediss://, \
                     redis+sentinel://, redis+cluster:// (or rediss+...), etcd://, etcds:// or file://"
                ),
            };
            return Err(invalid(raw, reason));
        }
    };
    Ok((backend, namespace))
}

/// A Redis URL's builder, for [`RedisBackend::connect`](crate::backend::redis::RedisBackend::connect).
#[cfg(feature = "redis")]
pub(crate) fn redis_builder(raw: &str) -> Result<crate::backend::redis::RedisBackendBuilder> {
    if !redis::is_redis(raw) {
        return Err(invalid(
            raw,
            "expected a redis://, rediss://, redis+sentinel:// or redis+cluster:// URL (or \
             rediss+sentinel://, rediss+cluster://)"
                .into(),
        ));
    }
    Ok(redis::builder(raw)?.0)
}

/// The `namespace` parameter of a query string; any other parameter is an error.
fn namespace_param(raw: &str, query: &str) -> Result<Option<String>> {
    let mut namespace = None;
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "namespace" => namespace = Some(value.into_owned()),
            other => return Err(invalid(raw, format!("unknown query parameter {other:?}"))),
        }
    }
    Ok(namespace)
}

/// Percent-decodes a URL's user info.
#[cfg(any(feature = "etcd", feature = "redis"))]
fn decode(raw: &str, text: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| invalid(raw, "bad percent-escape in the user info".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid(raw, "the user info is not UTF-8".into()))
}

fn invalid(raw: &str, reason: String) -> Error {
    Error::InvalidUrl {
        url: without_password(raw),
        reason,
    }
}

/// `raw` with any password in its authority replaced by `***`, so it never
/// reaches logs (also for URLs the `url` crate cannot parse, such as
/// `etcd://` with several hosts).
pub(crate) fn without_password(raw: &str) -> String {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return raw.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some((userinfo, hosts)) = authority.rsplit_once('@') else {
        return raw.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{hosts}{tail}"),
        None => raw.to_owned(),
    }
}

#[cfg(feature = "etcd")]
mod etcd {
    //! `etcd://[user[:password]@]host[:port][,host[:port]...][/][?namespace=NAME]`;
    //! `etcds://` for TLS with the system's root certificates.

    use std::sync::Arc;

    use super::{decode, invalid, namespace_param};
    use crate::backend::Backend;
    use crate::backend::etcd::{EtcdBackend, EtcdOptions};
    use crate::error::Result;

    /// What an etcd URL says.
    #[derive(Debug, PartialEq)]
    pub(super) struct EtcdUrl {
        pub(super) tls: bool,
        pub(super) endpoints: Vec<String>,
        pub(super) user: Option<(String, String)>,
        pub(super) namespace: Option<String>,
    }

    /// `None` if `raw` is not an etcd URL.
    pub(super) fn parse(raw: &str) -> Result<Option<EtcdUrl>> {
        let (tls, rest) = if let Some(rest) = raw.strip_prefix("etcd://") {
            (false, rest)
        } else if let Some(rest) = raw.strip_prefix("etcds://") {
            (true, rest)
        } else {
            return Ok(None);
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if !path.is_empty() && path != "/" {
            return Err(invalid(raw, format!("unexpected path {path:?}")));
        }
        let (user, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                let (name, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let name = decode(raw, name)?;
                if name.is_empty() {
                    return Err(invalid(raw, "empty user name".into()));
                }
                (Some((name, decode(raw, password)?)), hosts)
            }
            None => (None, authority),
        };
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            if host.is_empty() {
                return Err(invalid(raw, "empty host in the endpoint list".into()));
            }
            let check = url::Url::parse(&format!("http://{host}/"))
                .map_err(|e| invalid(raw, format!("bad endpoint {host:?}: {e}")))?;
            let host_name = check
                .host_str()
                .ok_or_else(|| invalid(raw, format!("bad endpoint {host:?}")))?;
            let port = check.port().unwrap_or(2379);
            endpoints.push(format!("{host_name}:{port}"));
        }
        Ok(Some(EtcdUrl {
            tls,
            endpoints,
            user,
            namespace: namespace_param(raw, query)?,
        }))
    }

    pub(super) async fn connect(
        raw: &str,
        url: EtcdUrl,
    ) -> Result<(Arc<dyn Backend>, Option<String>)> {
        let _ = raw;
        let mut options = EtcdOptions::new();
        if let Some((name, password)) = url.user {
            options = options.user(name, password);
        }
        if url.tls {
            options = options.tls(etcd_client::TlsOptions::new().with_native_roots());
        }
        let backend = EtcdBackend::connect(&url.endpoints, options).await?;
        Ok((Arc::new(backend), url.namespace))
    }
}

#[cfg(feature = "redis")]
mod redis;

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
        #[cfg(not(feature = "etcd"))]
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
    fn passwords_are_masked_even_in_multi_host_urls() {
        assert_eq!(
            without_password("etcd://u:p%40ss@h1:1,h2:2/?namespace=x"),
            "etcd://u:***@h1:1,h2:2/?namespace=x"
        );
        assert_eq!(without_password("etcd://h1:1,h2:2"), "etcd://h1:1,h2:2");
        assert_eq!(without_password("etcd://u@h"), "etcd://u@h");
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn etcd_urls_list_endpoints_auth_tls_and_namespace() {
        let url = etcd::parse("etcd://app:p%40ss@10.0.0.1:2379,h2,[::1]:23/?namespace=billing")
            .unwrap()
            .unwrap();
        assert_eq!(
            url,
            etcd::EtcdUrl {
                tls: false,
                endpoints: vec!["10.0.0.1:2379".into(), "h2:2379".into(), "[::1]:23".into()],
                user: Some(("app".into(), "p@ss".into())),
                namespace: Some("billing".into()),
            }
        );
        let tls = etcd::parse("etcds://h:1").unwrap().unwrap();
        assert!(tls.tls && tls.user.is_none() && tls.namespace.is_none());
        assert!(etcd::parse("memory://").unwrap().is_none());
        for (bad, says) in [
            ("etcd://h1,,h2", "empty host"),
            ("etcd://h:99999", "bad endpoint"),
            ("etcd://h/path", "unexpected path"),
            ("etcd://u:%zz@h", "percent-escape"),
            ("etcd://h?colour=red", "unknown query parameter"),
        ] {
            let shown = reason(bad);
            assert!(shown.contains(says), "{bad}: {shown}");
        }
        assert!(!reason("etcd://u:hunter2@h:99999").contains("hunter2"));
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
