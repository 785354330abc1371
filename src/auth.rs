//! Authentication: user/password, token, nkey seed, and creds files (user JWT + seed).
//!
//! With an nkey or a creds file, the server's INFO carries a nonce; the client signs it
//! with the user's Ed25519 key and sends the signature, base64url without padding, as
//! `sig` in CONNECT, with `nkey` (the public key) or `jwt`. Seeds and JWTs never appear in
//! errors or `Debug` output.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nkeys::{KeyPair, KeyPairType};

use crate::error::Error;

/// How the client proves who it is.
#[derive(Clone, Default)]
pub enum Auth {
    /// No credentials (or those in the server URL).
    #[default]
    None,
    /// `user` and `pass` in CONNECT.
    UserPassword {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// `auth_token` in CONNECT.
    Token(String),
    /// A user nkey seed (`SU…`): `nkey` and `sig` in CONNECT.
    NKeySeed(String),
    /// A creds file, read at each connect: `jwt` and `sig` in CONNECT.
    CredsFile(PathBuf),
    /// A file holding a user JWT and one holding its seed (nats-py's `(jwt, seed)` pair of
    /// `user_credentials`), both read at each connect: `jwt` and `sig` in CONNECT.
    JwtAndSeedFiles {
        /// The file with the user JWT (the bare JWT, or a creds file's JWT block).
        jwt: PathBuf,
        /// The file with the user seed (bare, or in a `USER NKEY SEED` block).
        seed: PathBuf,
    },
    /// A user JWT and its seed, already in memory.
    Credentials {
        /// The user JWT.
        jwt: String,
        /// The user nkey seed.
        seed: String,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &"***")
                .finish(),
            Auth::Token(_) => f.write_str("Token(***)"),
            Auth::NKeySeed(_) => f.write_str("NKeySeed(***)"),
            Auth::CredsFile(path) => f.debug_tuple("CredsFile").field(path).finish(),
            Auth::JwtAndSeedFiles { jwt, seed } => f
                .debug_struct("JwtAndSeedFiles")
                .field("jwt", jwt)
                .field("seed", seed)
                .finish(),
            Auth::Credentials { .. } => f.write_str("Credentials { jwt: ***, seed: *** }"),
        }
    }
}

/// The CONNECT fields an [`Auth`] fills in.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnectFields {
    /// `user`.
    pub user: Option<String>,
    /// `pass`.
    pub pass: Option<String>,
    /// `auth_token`.
    pub auth_token: Option<String>,
    /// `jwt`.
    pub jwt: Option<String>,
    /// `nkey`.
    pub nkey: Option<String>,
    /// `sig`.
    pub sig: Option<String>,
}

impl fmt::Debug for ConnectFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hide = |v: &Option<String>| v.as_ref().map(|_| "***");
        f.debug_struct("ConnectFields")
            .field("user", &self.user)
            .field("pass", &hide(&self.pass))
            .field("auth_token", &hide(&self.auth_token))
            .field("jwt", &hide(&self.jwt))
            .field("nkey", &self.nkey)
            .field("sig", &hide(&self.sig))
            .finish()
    }
}

/// A user JWT and its seed, as read from a creds file.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    jwt: String,
    seed: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials { jwt: ***, seed: *** }")
    }
}

impl Credentials {
    /// The user JWT.
    pub fn jwt(&self) -> &str {
        &self.jwt
    }

    /// The user seed.
    pub fn seed(&self) -> &str {
        &self.seed
    }
}

/// The text of the block named `name` (`NATS USER JWT`, `USER NKEY SEED`) in `text`.
fn block<'a>(text: &'a str, name: &str) -> Result<Option<&'a str>, &'static str> {
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    let is_marker = |line: &str, word: &str| {
        let t = line.trim();
        let inner = t.trim_matches('-');
        t.starts_with("---") && t.ends_with("---") && inner.trim() == format!("{word} {name}")
    };
    while let Some(line) = lines.next() {
        if !is_marker(line, "BEGIN") {
            continue;
        }
        let mut content: Option<&str> = None;
        for inner in lines.by_ref() {
            if is_marker(inner, "END") {
                return match content {
                    Some(c) => Ok(Some(c)),
                    None => Err(match name {
                        "NATS USER JWT" => "empty NATS USER JWT block",
                        _ => "empty USER NKEY SEED block",
                    }),
                };
            }
            let t = inner.trim();
            if t.is_empty() {
                return Err(match name {
                    "NATS USER JWT" => "blank line inside the NATS USER JWT block",
                    _ => "blank line inside the USER NKEY SEED block",
                });
            }
            if content.is_some() {
                return Err(match name {
                    "NATS USER JWT" => "more than one line inside the NATS USER JWT block",
                    _ => "more than one line inside the USER NKEY SEED block",
                });
            }
            content = Some(t);
        }
        return Err(match name {
            "NATS USER JWT" => "unterminated NATS USER JWT block",
            _ => "unterminated USER NKEY SEED block",
        });
    }
    Ok(None)
}

/// Parses the text of a creds file. The error is a reason that never quotes the file.
pub fn parse_creds(text: &str) -> Result<Credentials, &'static str> {
    let jwt = block(text, "NATS USER JWT")?.ok_or("missing the NATS USER JWT block")?;
    let seed = block(text, "USER NKEY SEED")?.ok_or("missing the USER NKEY SEED block")?;
    if jwt.split('.').count() != 3 {
        return Err("the NATS USER JWT block does not hold a JWT");
    }
    Ok(Credentials {
        jwt: jwt.to_owned(),
        seed: seed.to_owned(),
    })
}

/// Creds files are about 1 KiB; anything near this is not one.
const MAX_CREDS_FILE: u64 = 1 << 20;

/// The text of a creds, JWT or seed file. A UTF-8 byte order mark (which some editors
/// write) is dropped; UTF-16 text is named as such.
fn read_text(path: &Path) -> Result<String, Error> {
    let mut bytes = crate::files::read_bounded(path, MAX_CREDS_FILE)
        .map_err(|why| Error::creds_file(path, why))?;
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        bytes.drain(..3);
    } else if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Err(Error::creds_file(path, "UTF-16 text: save it as UTF-8"));
    }
    String::from_utf8(bytes).map_err(|_| Error::creds_file(path, "not UTF-8 text"))
}

/// Reads and parses a creds file.
pub fn load_creds_file(path: &Path) -> Result<Credentials, Error> {
    let text = read_text(path)?;
    let creds = parse_creds(&text).map_err(|why| Error::creds_file(path, why))?;
    user_key_pair(&creds.seed, &path.display().to_string())?;
    Ok(creds)
}

/// Reads a user JWT file and a seed file (see [`Auth::JwtAndSeedFiles`]).
pub fn load_jwt_and_seed_files(jwt: &Path, seed: &Path) -> Result<Credentials, Error> {
    let text = read_text(jwt)?;
    let token = match block(&text, "NATS USER JWT") {
        Ok(Some(token)) => token,
        Ok(None) => text.trim(),
        Err(why) => return Err(Error::creds_file(jwt, why)),
    };
    if token.split('.').count() != 3 || token.contains(char::is_whitespace) {
        return Err(Error::creds_file(jwt, "does not hold a JWT"));
    }
    let seed_text = read_text(seed)?;
    let seed_value = seed_in(&seed_text).map_err(|why| Error::creds_file(seed, why))?;
    user_key_pair(&seed_value, &seed.display().to_string())?;
    Ok(Credentials {
        jwt: token.to_owned(),
        seed: seed_value,
    })
}

/// The seed in a seed file's text: a `USER NKEY SEED` block, else the first line that is
/// a seed (a comment such as `Seed for alice:` may come first), else the first line that
/// starts with `S`, for the error to say why it is none.
fn seed_in(text: &str) -> Result<String, &'static str> {
    if let Some(seed) = block(text, "USER NKEY SEED")? {
        return Ok(seed.to_owned());
    }
    let mut lines = text.lines().map(str::trim);
    lines
        .clone()
        .find(|l| l.starts_with('S') && nkeys::decode_seed(l).is_ok())
        .or_else(|| lines.find(|l| l.starts_with('S')))
        .map(str::to_owned)
        .ok_or("no nkey seed in the file")
}

/// A seed given directly (`SU…`) or the path of a file holding one (bare, or in a
/// `USER NKEY SEED` block).
pub fn load_seed(seed_or_path: &str) -> Result<String, Error> {
    let trimmed = seed_or_path.trim();
    if trimmed.starts_with('S') && nkeys::decode_seed(trimmed).is_ok() {
        return Ok(trimmed.to_owned());
    }
    let path = Path::new(trimmed);
    if !path.exists() {
        // Do not echo what might be a mistyped seed.
        return Err(Error::credentials(
            "nkey seed",
            "neither a valid seed nor the path of an existing file",
        ));
    }
    let text = read_text(path)?;
    seed_in(&text).map_err(|why| Error::creds_file(path, why))
}

/// The key pair of a USER seed; any other kind of seed is refused.
pub fn user_key_pair(seed: &str, source: &str) -> Result<KeyPair, Error> {
    let kp = KeyPair::from_seed(seed.trim())
        .map_err(|_| Error::credentials(source, "not a valid nkey seed"))?;
    match kp.key_pair_type() {
        KeyPairType::User => Ok(kp),
        other => {
            let kind = match other {
                KeyPairType::Account => "an account seed",
                KeyPairType::Operator => "an operator seed",
                KeyPairType::Server => "a server seed",
                KeyPairType::Cluster => "a cluster seed",
                _ => "a seed of another kind",
            };
            Err(Error::credentials(
                source,
                format!("{kind} where a user seed is required"),
            ))
        }
    }
}

/// Signs the server's nonce: Ed25519 over its bytes, base64url without padding.
pub fn sign_nonce(kp: &KeyPair, nonce: &str) -> Result<String, Error> {
    let sig = kp
        .sign(nonce.as_bytes())
        .map_err(|_| Error::credentials("nkey seed", "signing the server's nonce failed"))?;
    Ok(URL_SAFE_NO_PAD.encode(sig))
}

impl Auth {
    /// Fills the CONNECT fields. Without a nonce (the server asked for no signature) an
    /// nkey or JWT is still sent, unsigned, and the server decides.
    pub fn apply(&self, nonce: Option<&str>, fields: &mut ConnectFields) -> Result<(), Error> {
        match self {
            Auth::None => {}
            Auth::UserPassword { user, password } => {
                fields.user = Some(user.clone());
                fields.pass = Some(password.clone());
            }
            Auth::Token(token) => fields.auth_token = Some(token.clone()),
            Auth::NKeySeed(seed) => {
                let kp = user_key_pair(&load_seed(seed)?, "nkey seed")?;
                fields.nkey = Some(kp.public_key());
                if let Some(n) = nonce {
                    fields.sig = Some(sign_nonce(&kp, n)?);
                }
            }
            Auth::CredsFile(path) => {
                let creds = load_creds_file(path)?;
                let kp = user_key_pair(&creds.seed, &path.display().to_string())?;
                fields.jwt = Some(creds.jwt);
                if let Some(n) = nonce {
                    fields.sig = Some(sign_nonce(&kp, n)?);
                }
            }
            Auth::JwtAndSeedFiles { jwt, seed } => {
                let creds = load_jwt_and_seed_files(jwt, seed)?;
                let kp = user_key_pair(&creds.seed, &seed.display().to_string())?;
                fields.jwt = Some(creds.jwt);
                if let Some(n) = nonce {
                    fields.sig = Some(sign_nonce(&kp, n)?);
                }
            }
            Auth::Credentials { jwt, seed } => {
                let kp = user_key_pair(seed, "credentials")?;
                fields.jwt = Some(jwt.clone());
                if let Some(n) = nonce {
                    fields.sig = Some(sign_nonce(&kp, n)?);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJzdWIiOiJVIn0.c2ln";

    fn creds_text(jwt: &str, seed: &str) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n"
        )
    }

    #[test]
    fn parses_nsc_style_files_lf_and_crlf() {
        let seed = KeyPair::new_user().seed().unwrap();
        let text = creds_text(JWT, &seed);
        let c = parse_creds(&text).unwrap();
        assert_eq!((c.jwt(), c.seed()), (JWT, seed.as_str()));
        let c = parse_creds(&text.replace('\n', "\r\n")).unwrap();
        assert_eq!((c.jwt(), c.seed()), (JWT, seed.as_str()));
    }

    #[test]
    fn malformed_creds_give_specific_reasons() {
        let seed = KeyPair::new_user().seed().unwrap();
        let good = creds_text(JWT, &seed);
        let table = [
            (
                good.replace("BEGIN NATS USER JWT", "BEGIN X"),
                "missing the NATS USER JWT block",
            ),
            (
                good.replace("BEGIN USER NKEY SEED", "BEGIN X"),
                "missing the USER NKEY SEED block",
            ),
            (
                good.replace(&format!("{JWT}\n"), &format!("{JWT}\n\n")),
                "blank line inside the NATS USER JWT block",
            ),
            (
                good.replace(&format!("{seed}\n"), &format!("\n{seed}\n")),
                "blank line inside the USER NKEY SEED block",
            ),
            (
                good.split("------END USER NKEY SEED")
                    .next()
                    .unwrap()
                    .to_owned(),
                "unterminated USER NKEY SEED block",
            ),
            (
                good.replace(&format!("{JWT}\n"), ""),
                "empty NATS USER JWT block",
            ),
            (
                good.replace(JWT, "notajwt"),
                "the NATS USER JWT block does not hold a JWT",
            ),
        ];
        for (text, want) in table {
            assert_eq!(parse_creds(&text), Err(want));
        }
    }

    #[test]
    fn files_with_a_byte_order_mark_or_a_comment_before_the_seed_are_read() {
        let dir = std::env::temp_dir().join(format!("arn-auth-bom-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kp = KeyPair::new_user();
        let seed = kp.seed().unwrap();
        let bom = |text: &str| [&[0xEF, 0xBB, 0xBF][..], text.as_bytes()].concat();
        let creds = dir.join("user.creds");
        for text in [
            creds_text(JWT, &seed),
            creds_text(JWT, &seed).replace('\n', "\r\n"),
        ] {
            std::fs::write(&creds, bom(&text)).unwrap();
            let c = load_creds_file(&creds).unwrap();
            assert_eq!((c.jwt(), c.seed()), (JWT, seed.as_str()));
        }
        let (jwt_file, seed_file) = (dir.join("user.jwt"), dir.join("user.nk"));
        std::fs::write(&jwt_file, bom(JWT)).unwrap();
        std::fs::write(&seed_file, bom(&format!("Seed for user alice:\n{seed}\n"))).unwrap();
        let c = load_jwt_and_seed_files(&jwt_file, &seed_file).unwrap();
        assert_eq!((c.jwt(), c.seed()), (JWT, seed.as_str()));
        assert_eq!(load_seed(seed_file.to_str().unwrap()).unwrap(), seed);
        // A line that starts like a seed and is none is still named as such.
        std::fs::write(&seed_file, "Seed for user alice:\n").unwrap();
        let e = load_jwt_and_seed_files(&jwt_file, &seed_file)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a valid nkey seed") && !e.contains(&seed),
            "{e}"
        );
        // UTF-16 (as some editors save): said, not taken for a missing block.
        let utf16: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain(
                creds_text(JWT, &seed)
                    .encode_utf16()
                    .flat_map(u16::to_le_bytes),
            )
            .collect();
        std::fs::write(&creds, utf16).unwrap();
        let e = load_creds_file(&creds).unwrap_err().to_string();
        assert!(e.ends_with("UTF-16 text: save it as UTF-8"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn signs_nonces_verifiably() {
        let kp = KeyPair::new_user();
        let sig = sign_nonce(&kp, "nonce-123").unwrap();
        assert!(!sig.contains('=') && !sig.contains('+') && !sig.contains('/'));
        let raw = URL_SAFE_NO_PAD.decode(&sig).unwrap();
        kp.verify(b"nonce-123", &raw).unwrap();
    }

    #[test]
    fn refuses_seeds_of_other_kinds() {
        let account = KeyPair::new_account().seed().unwrap();
        let e = user_key_pair(&account, "nkey seed").unwrap_err();
        assert_eq!(
            e.to_string(),
            "credentials: nkey seed: an account seed where a user seed is required"
        );
        assert!(!e.to_string().contains(&account));
        let e = user_key_pair("SUnotaseed", "nkey seed").unwrap_err();
        assert_eq!(
            e.to_string(),
            "credentials: nkey seed: not a valid nkey seed"
        );
    }

    #[test]
    fn apply_fills_connect_fields() {
        let kp = KeyPair::new_user();
        let seed = kp.seed().unwrap();
        let mut f = ConnectFields::default();
        Auth::NKeySeed(seed.clone())
            .apply(Some("abc"), &mut f)
            .unwrap();
        assert_eq!(f.nkey.as_deref(), Some(kp.public_key().as_str()));
        let raw = URL_SAFE_NO_PAD.decode(f.sig.as_deref().unwrap()).unwrap();
        kp.verify(b"abc", &raw).unwrap();
        let mut f = ConnectFields::default();
        Auth::Credentials {
            jwt: JWT.into(),
            seed,
        }
        .apply(Some("n"), &mut f)
        .unwrap();
        assert_eq!(f.jwt.as_deref(), Some(JWT));
        assert!(f.sig.is_some());
    }

    #[test]
    fn secrets_stay_out_of_debug_and_errors() {
        let seed = KeyPair::new_user().seed().unwrap();
        let shown = format!(
            "{:?} {:?} {:?} {:?}",
            Auth::UserPassword {
                user: "u".into(),
                password: "pw-secret".into()
            },
            Auth::Token("tok-secret".into()),
            Auth::NKeySeed(seed.clone()),
            Auth::Credentials {
                jwt: JWT.into(),
                seed: seed.clone()
            },
        );
        for secret in ["pw-secret", "tok-secret", seed.as_str(), JWT] {
            assert!(!shown.contains(secret), "{shown}");
        }
        let e = load_seed("SUAnot-a-real-seed-but-secretish").unwrap_err();
        assert!(!e.to_string().contains("secretish"), "{e}");
    }

    #[test]
    fn missing_creds_file_names_the_path() {
        let e = load_creds_file(Path::new("/nonexistent/dir/app.creds")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "credentials: /nonexistent/dir/app.creds: file not found"
        );
    }

    #[test]
    fn credentials_given_where_a_path_belongs_are_not_echoed() {
        let seed = KeyPair::new_user().seed().unwrap();
        for given in [creds_text(JWT, &seed), JWT.to_owned(), seed.clone()] {
            let text = load_creds_file(Path::new(&given)).unwrap_err().to_string();
            assert!(!text.contains(&seed) && !text.contains("eyJ"), "{text}");
            assert!(text.contains("not shown"), "{text}");
        }
    }
}
