//! Handing secrets to a container: environment variables, or files on a private tmpfs.

use berth_runtime::secret_files::{SecretFile, SecretFiles};
use zeroize::Zeroizing;

use super::{check_name, Secret, SecretError};

/// `NAME=value` for each secret, for a container's environment. Each entry is itself a
/// [`Secret`], so the list never prints its values.
pub fn env_vars(secrets: &[(String, Secret)]) -> Result<Vec<Secret>, SecretError> {
    secrets
        .iter()
        .map(|(name, value)| {
            check_name(name)?;
            let text = value
                .expose_str()
                .filter(|text| !text.contains('\0'))
                .ok_or_else(|| SecretError::NotEnvSafe(name.clone()))?;
            Ok(Secret::new(format!("{name}={text}")))
        })
        .collect()
}

/// Secrets as files: `(name, path in the container, value)` for each, for the runtime, which
/// writes them to a tmpfs of the container's own and bind-mounts each read-only at its path
/// (`berth_runtime::secret_files`). The values are copied into memory that is zeroed on drop.
pub fn files(secrets: &[(String, String, Secret)]) -> Result<SecretFiles, SecretError> {
    secrets
        .iter()
        .map(|(name, destination, value)| {
            check_name(name)?;
            Ok(SecretFile {
                name: name.clone(),
                destination: destination.clone(),
                value: Zeroizing::new(value.expose().to_vec()),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(SecretFiles)
}
