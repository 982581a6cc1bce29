//! Secrets from the API (the operator's namespace), through the watch cache.

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{ObjectRef, Store};
use strait_crds::SecretKeyRef;
use zeroize::Zeroizing;

use crate::spec::{self, SecretSource};

/// Reads `secretRef`s from the watched Secrets of one namespace.
#[derive(Debug)]
pub struct StoreSecrets<'a> {
    /// The watch cache.
    pub store: &'a Store<Secret>,
    /// The namespace the Secrets live in.
    pub namespace: &'a str,
}

impl SecretSource for StoreSecrets<'_> {
    fn read(&mut self, r: &SecretKeyRef) -> Result<Zeroizing<Vec<u8>>, String> {
        let secret = self
            .store
            .get(&ObjectRef::new(&r.name).within(self.namespace));
        key_of(self.namespace, secret.as_deref(), r)
    }
}

/// The bytes of `r`'s key in `secret` (the Secret `r` names in `namespace`, if it exists), one
/// trailing newline dropped, as the agent uses them; `kubectl strait diagnose` reads keys the
/// same way.
///
/// # Errors
/// The Secret or the key is missing, or the key is empty (the message names which).
pub fn key_of(
    namespace: &str,
    secret: Option<&Secret>,
    r: &SecretKeyRef,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let secret = secret.ok_or_else(|| format!("Secret {namespace}/{} not found", r.name))?;
    let mut bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|v| Zeroizing::new(v.0.clone()))
        .ok_or_else(|| format!("Secret {namespace}/{} has no key {:?}", r.name, r.key))?;
    spec::trim_newline(&mut bytes);
    if bytes.is_empty() {
        return Err(format!(
            "Secret {namespace}/{} key {:?} is empty",
            r.name, r.key
        ));
    }
    Ok(bytes)
}
