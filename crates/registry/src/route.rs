//! Turns a `/v2/...` path into a `Route`. Repository names contain slashes, so routes are
//! recognised from the right: the last one or two segments name the endpoint and everything
//! before them is the repository.

use berth_oci::RepositoryName;

use crate::error::{ApiError, Code};

/// An endpoint of the distribution API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(RepositoryName),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepositoryName, String),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepositoryName, String),
    /// `/v2/<name>/blobs/uploads/`
    UploadStart(RepositoryName),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(RepositoryName, String),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepositoryName, String),
}

impl Route {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags(_) => "tags",
            Route::Manifest(..) => "manifest",
            Route::Blob(..) => "blob",
            Route::UploadStart(_) | Route::Upload(..) => "upload",
            Route::Referrers(..) => "referrers",
        }
    }

    /// Parses a request path; `None` when it is not a distribution API path at all.
    pub fn parse(path: &str) -> Option<Result<Route, ApiError>> {
        let rest = path.strip_prefix("/v2")?;
        if rest.is_empty() || rest == "/" {
            return Some(Ok(Route::Base));
        }
        let rest = rest.strip_prefix('/')?;
        if rest == "_catalog" {
            return Some(Ok(Route::Catalog));
        }
        let segments: Vec<&str> = rest.split('/').collect();
        let n = segments.len();
        let at = |i: usize| if i <= n { segments[n - i] } else { "" };
        let (name_len, route): (usize, fn(RepositoryName, String) -> Route) =
            if n >= 3 && at(3) == "blobs" && at(2) == "uploads" {
                if at(1).is_empty() {
                    (n - 3, |name, _| Route::UploadStart(name))
                } else {
                    (n - 3, Route::Upload)
                }
            } else if n >= 2 && at(2) == "blobs" && at(1) == "uploads" {
                (n - 2, |name, _| Route::UploadStart(name))
            } else if n >= 2 && at(2) == "tags" && at(1) == "list" {
                (n - 2, |name, _| Route::Tags(name))
            } else if n >= 2 && at(2) == "manifests" {
                (n - 2, Route::Manifest)
            } else if n >= 2 && at(2) == "blobs" {
                (n - 2, Route::Blob)
            } else if n >= 2 && at(2) == "referrers" {
                (n - 2, Route::Referrers)
            } else {
                return None;
            };
        if name_len == 0 {
            return None;
        }
        let name = segments[..name_len].join("/");
        Some(
            name.parse::<RepositoryName>()
                .map(|name| route(name, at(1).to_owned()))
                .map_err(|e| ApiError::new(Code::NameInvalid, e.to_string())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> RepositoryName {
        s.parse().expect("name")
    }

    fn route(path: &str) -> Route {
        Route::parse(path).expect("api path").expect("valid")
    }

    #[test]
    fn recognises_every_endpoint() {
        assert_eq!(route("/v2/"), Route::Base);
        assert_eq!(route("/v2"), Route::Base);
        assert_eq!(route("/v2/_catalog"), Route::Catalog);
        assert_eq!(route("/v2/a/b/tags/list"), Route::Tags(name("a/b")));
        assert_eq!(
            route("/v2/a/manifests/latest"),
            Route::Manifest(name("a"), "latest".into())
        );
        assert_eq!(
            route("/v2/a/b/blobs/sha256:00"),
            Route::Blob(name("a/b"), "sha256:00".into())
        );
        assert_eq!(route("/v2/a/blobs/uploads/"), Route::UploadStart(name("a")));
        assert_eq!(route("/v2/a/blobs/uploads"), Route::UploadStart(name("a")));
        assert_eq!(
            route("/v2/a/blobs/uploads/123"),
            Route::Upload(name("a"), "123".into())
        );
        assert_eq!(
            route("/v2/a/referrers/sha256:00"),
            Route::Referrers(name("a"), "sha256:00".into())
        );
    }

    #[test]
    fn names_may_contain_endpoint_words() {
        assert_eq!(
            route("/v2/blobs/uploads/blobs/uploads/"),
            Route::UploadStart(name("blobs/uploads"))
        );
        assert_eq!(
            route("/v2/x/manifests/blobs/d"),
            Route::Blob(name("x/manifests"), "d".into())
        );
        assert_eq!(
            route("/v2/tags/list/tags/list"),
            Route::Tags(name("tags/list"))
        );
    }

    #[test]
    fn traversal_and_bad_names_are_name_invalid() {
        for path in [
            "/v2/../etc/manifests/latest",
            "/v2/a/../../b/blobs/sha256:00",
            "/v2/A/tags/list",
            "/v2/a//b/tags/list",
            "/v2/%2e%2e/tags/list",
        ] {
            let err = Route::parse(path).expect("api path").expect_err(path);
            assert_eq!(err.code, Code::NameInvalid, "{path}");
        }
    }

    #[test]
    fn other_paths_are_not_api_routes() {
        for path in [
            "/",
            "/metrics",
            "/v2x",
            "/v2/a",
            "/v2/manifests/x",
            "/v3/a/tags/list",
        ] {
            assert!(Route::parse(path).is_none(), "{path}");
        }
    }
}
