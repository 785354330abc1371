//! NATS JWT v2 (operator / account / user) generated at run time with the
//! `nkeys` crate, no `nsc`.
//!
//! Format: `b64url(header) "." b64url(claims) "." b64url(ed25519 signature
//! over the first two parts)`, all base64url without padding, header
//! `{"typ":"JWT","alg":"ed25519-nkey"}`.
//!
//! The `jti` claim is, by convention of the Go `nats-io/jwt` library, the
//! base32 of a SHA-512/256 hash of the claims; its decoder does not check
//! it (it checks the signature, the issuer's key prefix and the time
//! bounds), so this module uses a unique random-ish base32 string instead.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use data_encoding::BASE32_NOPAD;
use nkeys::KeyPair;
use serde_json::{json, Value};

use crate::unique_suffix;

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn keypair(seed: &str) -> KeyPair {
    KeyPair::from_seed(seed).unwrap_or_else(|e| panic!("bad nkey seed: {e}"))
}

fn seed_of(kp: &KeyPair) -> String {
    kp.seed().expect("generated key pair has a seed")
}

/// Signs `claims` as a NATS JWT v2 with the issuer's seed.
///
/// Fills in `iss` (the issuer's public key), and `jti` and `iat` unless the
/// claims already have them. `sub`, `name` and `nats` must be provided.
pub fn encode_jwt(mut claims: Value, issuer_seed: &str) -> String {
    let issuer = keypair(issuer_seed);
    let obj = claims
        .as_object_mut()
        .expect("claims must be a JSON object");
    obj.insert("iss".into(), Value::String(issuer.public_key()));
    obj.entry("iat").or_insert_with(|| json!(now_secs()));
    obj.entry("jti")
        .or_insert_with(|| Value::String(BASE32_NOPAD.encode(unique_suffix().as_bytes())));
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
    let signing_input = format!("{header}.{body}");
    let sig = issuer
        .sign(signing_input.as_bytes())
        .expect("ed25519 signing");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// The `.creds` file format written by `nsc`: the user JWT and the user seed
/// in armored blocks.
pub fn creds_text(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

/// A user identity: its JWT, its nkey seed (`SU...`) and public key (`U...`).
#[derive(Clone, Debug)]
pub struct UserCreds {
    /// The signed user JWT.
    pub jwt: String,
    /// The user's nkey seed.
    pub seed: String,
    /// The user's public key (the JWT's `sub`).
    pub public_key: String,
}

impl UserCreds {
    /// The creds file text ([`creds_text`]).
    pub fn creds(&self) -> String {
        creds_text(&self.jwt, &self.seed)
    }

    /// Signs a server nonce with the user seed: base64url without padding,
    /// as the `sig` field of CONNECT expects.
    pub fn sign_nonce(&self, nonce: &str) -> String {
        let sig = keypair(&self.seed)
            .sign(nonce.as_bytes())
            .expect("ed25519 signing");
        URL_SAFE_NO_PAD.encode(sig)
    }
}

/// Freshly generated operator, system account and application account, for
/// [`crate::ServerConfig::operator_mode`].
#[derive(Clone, Debug)]
pub struct JwtSetup {
    /// The self-signed operator JWT.
    pub operator_jwt: String,
    /// The operator public key (`O...`).
    pub operator: String,
    /// The operator seed (`SO...`).
    pub operator_seed: String,
    /// The system account JWT (signed by the operator).
    pub system_account_jwt: String,
    /// The system account public key (`A...`).
    pub system_account: String,
    /// The application account JWT (signed by the operator, unlimited,
    /// JetStream enabled when the server has it).
    pub account_jwt: String,
    /// The application account public key (`A...`).
    pub account: String,
    /// The application account seed (`SA...`), which signs user JWTs.
    pub account_seed: String,
}

impl Default for JwtSetup {
    fn default() -> Self {
        Self::new()
    }
}

/// Unlimited account limits (`-1` everywhere); with `jetstream`, unlimited
/// JetStream storage too (what enables JetStream for the account).
fn unlimited_account_nats(jetstream: bool) -> Value {
    let mut limits = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1
    });
    if jetstream {
        for k in ["mem_storage", "disk_storage", "streams", "consumer"] {
            limits[k] = json!(-1);
        }
    }
    json!({
        "limits": limits,
        "default_permissions": {"pub": {}, "sub": {}},
        "type": "account",
        "version": 2
    })
}

fn account_jwt(name: &str, account: &KeyPair, operator_seed: &str, jetstream: bool) -> String {
    encode_jwt(
        json!({"sub": account.public_key(), "name": name, "nats": unlimited_account_nats(jetstream)}),
        operator_seed,
    )
}

impl JwtSetup {
    /// Generates operator, system account (`SYS`) and account (`APP`) keys
    /// and JWTs.
    pub fn new() -> Self {
        let op = KeyPair::new_operator();
        let operator_seed = seed_of(&op);
        let operator_jwt = encode_jwt(
            json!({
                "sub": op.public_key(),
                "name": "proto-tests-operator",
                "nats": {"type": "operator", "version": 2}
            }),
            &operator_seed,
        );
        let sys = KeyPair::new_account();
        let app = KeyPair::new_account();
        JwtSetup {
            system_account_jwt: account_jwt("SYS", &sys, &operator_seed, false),
            system_account: sys.public_key(),
            account_jwt: account_jwt("APP", &app, &operator_seed, true),
            account: app.public_key(),
            account_seed: seed_of(&app),
            operator_jwt,
            operator: op.public_key(),
            operator_seed,
        }
    }

    /// A new user of the application account with no limits.
    pub fn user(&self, name: &str) -> UserCreds {
        self.user_with(name, json!({}), None)
    }

    /// A new user of the application account; `nats_overrides` (a JSON
    /// object) is merged over the default user `nats` claims (e.g.
    /// `{"pub": {"allow": ["a.>"]}}`), `exp` sets the expiry (unix seconds).
    pub fn user_with(&self, name: &str, nats_overrides: Value, exp: Option<i64>) -> UserCreds {
        issue_user(&self.account_seed, name, nats_overrides, exp)
    }

    /// Creds file text for a new user of the application account.
    pub fn user_creds(&self, name: &str) -> String {
        self.user(name).creds()
    }

    /// A user signed by an account the server does not know: the server
    /// answers `-ERR 'Authorization Violation'`.
    pub fn user_from_other_account(&self) -> UserCreds {
        let other = KeyPair::new_account();
        issue_user(&seed_of(&other), "stranger", json!({}), None)
    }

    /// Creds file text of [`JwtSetup::user_from_other_account`].
    pub fn user_creds_from_other_account(&self) -> String {
        self.user_from_other_account().creds()
    }

    /// A user whose JWT expired an hour ago (issued two hours ago).
    pub fn expired_user(&self) -> UserCreds {
        let now = now_secs();
        issue_user_at(
            &self.account_seed,
            "expired",
            json!({}),
            Some(now - 3600),
            Some(now - 7200),
        )
    }

    /// Creds file text of [`JwtSetup::expired_user`].
    pub fn expired_user_creds(&self) -> String {
        self.expired_user().creds()
    }
}

fn user_nats(overrides: Value) -> Value {
    let mut nats = json!({
        "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
        "type": "user", "version": 2
    });
    if let (Some(base), Some(over)) = (nats.as_object_mut(), overrides.as_object()) {
        for (k, v) in over {
            base.insert(k.clone(), v.clone());
        }
    }
    nats
}

fn issue_user(
    account_seed: &str,
    name: &str,
    nats_overrides: Value,
    exp: Option<i64>,
) -> UserCreds {
    issue_user_at(account_seed, name, nats_overrides, exp, None)
}

fn issue_user_at(
    account_seed: &str,
    name: &str,
    nats_overrides: Value,
    exp: Option<i64>,
    iat: Option<i64>,
) -> UserCreds {
    let user = KeyPair::new_user();
    let mut claims =
        json!({"sub": user.public_key(), "name": name, "nats": user_nats(nats_overrides)});
    if let Some(exp) = exp {
        claims["exp"] = json!(exp);
    }
    if let Some(iat) = iat {
        claims["iat"] = json!(iat);
    }
    UserCreds {
        jwt: encode_jwt(claims, account_seed),
        seed: seed_of(&user),
        public_key: user.public_key(),
    }
}
