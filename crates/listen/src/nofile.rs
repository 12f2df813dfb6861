//! The open-files limit: every connection is a file descriptor, so the caps must fit in it.

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// The soft limit tried when the hard limit is unlimited.
const WHEN_UNLIMITED: u64 = 1 << 20;

/// Raises the process's soft `RLIMIT_NOFILE` to its hard limit (never above: raising the hard
/// limit needs `CAP_SYS_RESOURCE`, and asking for more fails) and returns the soft limit in
/// effect afterwards.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    let target = if hard == RLIM_INFINITY {
        WHEN_UNLIMITED.max(soft)
    } else {
        hard
    };
    if soft != RLIM_INFINITY && soft < target {
        match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
            Ok(()) => return Ok(target),
            Err(error) => {
                tracing::debug!(%error, soft, target, "cannot raise the open-files limit");
            }
        }
    }
    Ok(soft)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_soft_limit_reaches_the_hard_one_and_no_further() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let raised = raise_open_files_limit().unwrap();
        let (soft, hard_after) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(hard_after, hard, "the hard limit is never changed");
        assert_eq!(raised, soft);
        if hard != RLIM_INFINITY {
            assert_eq!(soft, hard);
        }
    }
}
