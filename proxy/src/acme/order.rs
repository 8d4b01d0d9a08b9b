//! One certificate order for one host: account (stored, or created and stored), new order,
//! the challenge answered while the CA validates, finalization with a fresh key, and the
//! chain downloaded. Challenge answers are withdrawn however the order ends.

use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use portico_config::{Acme, AcmeChallenge};

use super::storage::Storage;
use super::{certs, Http01};
use crate::tls::AcmeCerts;

/// How long the CA may take to validate and to issue.
const CA_PATIENCE: Duration = Duration::from_secs(90);

/// Where the challenge answers go while the CA validates.
pub struct Responders<'a> {
    /// HTTP-01 answers of plain listeners.
    pub http01: &'a Http01,
    /// The listener's certificates (TLS-ALPN-01 answers).
    pub certs: &'a AcmeCerts,
}

/// Withdraws published answers when the order ends, whatever the outcome.
struct Published<'a> {
    responders: &'a Responders<'a>,
    tokens: Vec<String>,
    alpn_hosts: Vec<String>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.responders.http01.remove(t);
        }
        for h in &self.alpn_hosts {
            self.responders.certs.set_challenge(h, None);
        }
    }
}

fn account_builder(cfg: &Acme) -> Result<instant_acme::AccountBuilder, String> {
    // instant-acme builds rustls client configs with the process default provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match &cfg.ca_roots {
        Some(p) => {
            Account::builder_with_root(p).map_err(|e| format!("ca_roots {}: {e}", p.display()))
        }
        None => Account::builder().map_err(|e| format!("cannot set up HTTPS to the CA: {e}")),
    }
}

/// The stored account, or a new one (stored before use).
async fn account(cfg: &Acme, storage: &Storage, fresh: bool) -> Result<Account, String> {
    if !fresh {
        if let Some(json) = storage.read_account()? {
            let creds: AccountCredentials = serde_json::from_slice(&json).map_err(|e| {
                format!(
                    "{}: unreadable account file: {e}",
                    storage.dir().join("account.json").display()
                )
            })?;
            return account_builder(cfg)?
                .from_credentials(creds)
                .await
                .map_err(|e| format!("CA at {}: {e}", cfg.directory));
        }
    }
    let contact = cfg.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = account_builder(cfg)?
        .create(
            &NewAccount {
                contact: &contacts,
                // Configuring `acme` is accepting the CA's terms (as with Caddy and certbot
                // --agree-tos); the docs say so.
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.directory.clone(),
            None,
        )
        .await
        .map_err(|e| format!("creating an account at {}: {e}", cfg.directory))?;
    let json = serde_json::to_vec(&creds).map_err(|e| format!("account credentials: {e}"))?;
    storage.write_account(&json)?;
    tracing::info!(directory = %cfg.directory, account = account.id(), "ACME account created");
    Ok(account)
}

fn is_unknown_account(e: &instant_acme::Error) -> bool {
    matches!(e, instant_acme::Error::Api(p)
        if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist"))
}

/// Orders a certificate for `host`; returns the PEM of its new private key and chain.
pub async fn obtain(
    cfg: &Acme,
    storage: &Storage,
    host: &str,
    responders: &Responders<'_>,
) -> Result<String, String> {
    let identifiers = [Identifier::Dns(host.to_string())];
    let mut acct = account(cfg, storage, false).await?;
    let mut order = match acct.new_order(&NewOrder::new(&identifiers)).await {
        Ok(o) => o,
        // The CA forgot the stored account (a test CA restarted, an account deactivated):
        // make a new one once.
        Err(e) if is_unknown_account(&e) => {
            tracing::warn!(directory = %cfg.directory, "the CA does not know the stored account; creating a new one");
            acct = account(cfg, storage, true).await?;
            acct.new_order(&NewOrder::new(&identifiers))
                .await
                .map_err(|e| format!("new order: {e}"))?
        }
        Err(e) => return Err(format!("new order: {e}")),
    };
    let mut published = Published {
        responders,
        tokens: Vec::new(),
        alpn_hosts: Vec::new(),
    };
    let wanted = match cfg.challenge {
        AcmeChallenge::Http01 => ChallengeType::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    {
        let mut authorizations = order.authorizations();
        while let Some(a) = authorizations.next().await {
            let mut a = a.map_err(|e| format!("authorization: {e}"))?;
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                s => return Err(format!("authorization of {host} is {s:?}")),
            }
            let mut challenge = a.challenge(wanted.clone()).ok_or_else(|| {
                format!(
                    "the CA offers no {} challenge for {host}",
                    cfg.challenge.as_str()
                )
            })?;
            let key_auth = challenge.key_authorization();
            match cfg.challenge {
                AcmeChallenge::Http01 => {
                    responders
                        .http01
                        .insert(&challenge.token, key_auth.as_str());
                    published.tokens.push(challenge.token.clone());
                }
                AcmeChallenge::TlsAlpn01 => {
                    let cert = certs::alpn_challenge(host, key_auth.digest().as_ref())?;
                    responders.certs.set_challenge(host, Some(cert));
                    published.alpn_hosts.push(host.to_string());
                }
            }
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("challenge ready: {e}"))?;
        }
    }
    let retries = RetryPolicy::new().timeout(CA_PATIENCE);
    let status = order
        .poll_ready(&retries)
        .await
        .map_err(|e| format!("waiting for validation: {e}"))?;
    if status != OrderStatus::Ready {
        let mut why = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut a)) = authorizations.next().await {
            if let Ok(state) = a.refresh().await {
                why.extend(
                    state
                        .challenges
                        .iter()
                        .filter_map(|c| c.error.as_ref())
                        .map(|p| p.to_string()),
                );
            }
        }
        return Err(format!(
            "{} validation of {host} failed: {}",
            cfg.challenge.as_str(),
            if why.is_empty() {
                format!("order {status:?}")
            } else {
                why.join("; ")
            }
        ));
    }
    drop(published);
    let key_pem = order
        .finalize()
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain = order
        .poll_certificate(&retries)
        .await
        .map_err(|e| format!("certificate download: {e}"))?;
    Ok(format!("{key_pem}{chain}"))
}
