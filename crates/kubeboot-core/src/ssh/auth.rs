//! Logging in: the key file, then ssh-agent's keys, then the password.

use std::sync::Arc;

use russh::client::{AuthResult, Handle};
use russh::keys::PrivateKeyWithHashAlg;

use super::{Client, SshError, Target};

/// Logs in: the key file, then the agent's keys, then the password.
pub(super) async fn authenticate(handle: &mut Handle<Client>, target: &Target) -> Result<(), SshError> {
    let user = target.user.as_str();
    let mut tried = Vec::new();
    let lost = |e: russh::Error| {
        SshError::ConnectionLost(format!(
            "connection to {} dropped during login: {e}",
            target.host_port()
        ))
    };
    let agent_available = target.agent && std::env::var_os("SSH_AUTH_SOCK").is_some();
    // An encrypted key file is no reason to give up while the agent may hold the same key: its
    // error is kept for the end, when nothing else got in.
    let mut encrypted_key = None;
    if let Some(path) = &target.key {
        let key_file_error = |reason: String, encrypted: bool| SshError::KeyFile {
            path: path.display().to_string(),
            reason,
            encrypted,
            agent_tried: agent_available,
        };
        match russh::keys::load_secret_key(path, None) {
            Ok(key) => {
                tried.push("publickey");
                let hash = handle_rsa_hash(handle).await;
                let result = handle
                    .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
                    .await
                    .map_err(lost)?;
                if result.success() {
                    return Ok(());
                }
            }
            Err(russh::keys::Error::KeyIsEncrypted) => {
                let reason = if agent_available {
                    "it is encrypted with a passphrase, and none of ssh-agent's keys was accepted — load this key into the agent (ssh-add)"
                } else {
                    "it is encrypted with a passphrase — load it into ssh-agent (ssh-add)"
                };
                encrypted_key = Some(key_file_error(reason.into(), true));
            }
            Err(other) => {
                return Err(key_file_error(other.to_string(), false));
            }
        }
    }
    if agent_available && let Ok(mut agent) = russh::keys::agent::client::AgentClient::connect_env().await {
        tried.push("agent");
        let identities = agent.request_identities().await.unwrap_or_default();
        for identity in identities {
            let russh::keys::agent::AgentIdentity::PublicKey { key, .. } = identity else {
                continue;
            };
            let hash = handle_rsa_hash(handle).await;
            if let Ok(AuthResult::Success) = handle.authenticate_publickey_with(user, key, hash, &mut agent).await {
                return Ok(());
            }
        }
    }
    if let Some(password) = &target.password {
        tried.push("password");
        let result = handle
            .authenticate_password(user, password.expose())
            .await
            .map_err(lost)?;
        if result.success() {
            return Ok(());
        }
    }
    if let Some(e) = encrypted_key {
        return Err(e);
    }
    Err(SshError::Auth {
        user: user.to_string(),
        host: target.host_port(),
        tried,
    })
}

async fn handle_rsa_hash(handle: &Handle<Client>) -> Option<russh::keys::HashAlg> {
    handle.best_supported_rsa_hash().await.ok().flatten().flatten()
}
