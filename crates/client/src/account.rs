//! Signing up and in: key pairs made and unwrapped on the client, the login
//! secret derived from the password — which never leaves the device.

use coffer_crypto::{KdfParams, UserKeys, login_secret};
use coffer_net::Net;
use coffer_proto::request::{DeviceRegister, Login, Register};
use coffer_proto::response::{DeviceInfo, Registered, Session as SessionInfo};
use coffer_proto::types::{Blob, Kdf, LoginSecret, Sha256};
use coffer_proto::{Request, Response, name};
use zeroize::Zeroizing;

use crate::error::ClientError;
use crate::pool::Pool;
use crate::session::{Session, os_rng, unexpected};

/// A username and password, as typed.
#[derive(Clone)]
pub struct Credentials {
    /// The username (normalized to lowercase).
    pub username: String,
    /// The password.
    pub password: Zeroizing<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Checks the username's form and pairs it with the password.
    pub fn new(username: &str, password: Zeroizing<String>) -> Result<Credentials, ClientError> {
        let username =
            name::normalize_username(username).map_err(|e| ClientError::Usage(e.to_string()))?;
        if password.is_empty() {
            return Err(ClientError::Usage("the password is empty".into()));
        }
        Ok(Credentials { username, password })
    }

    fn secret(&self) -> LoginSecret {
        LoginSecret(Sha256(*login_secret(&self.username, &self.password)))
    }
}

fn kdf_wire(kdf: &KdfParams) -> Kdf {
    Kdf {
        alg: KdfParams::ALG.into(),
        m_cost_kib: kdf.m_cost_kib,
        t_cost: kdf.t_cost,
        p_cost: kdf.p_cost,
        salt: Blob(kdf.salt.clone()),
    }
}

fn kdf_params(kdf: &Kdf) -> Result<KdfParams, ClientError> {
    if kdf.alg != KdfParams::ALG {
        return Err(ClientError::Usage(format!(
            "the private key is wrapped with {:?}, which this client does not know",
            kdf.alg
        )));
    }
    Ok(KdfParams {
        m_cost_kib: kdf.m_cost_kib,
        t_cost: kdf.t_cost,
        p_cost: kdf.p_cost,
        salt: kdf.salt.0.clone(),
    })
}

/// Creates an account: a new RSA-2048 key pair, its private half wrapped under
/// the password with `kdf`; both published. Returns the keys.
pub async fn register<N: Net>(
    pool: &Pool<N>,
    credentials: &Credentials,
    kdf: KdfParams,
) -> Result<(Registered, UserKeys), ClientError> {
    let keys = UserKeys::generate(&mut os_rng());
    register_keys(pool, credentials, kdf, keys, &mut os_rng()).await
}

/// Creates an account with a key pair made beforehand, its private half
/// wrapped with randomness from `rng` (the simulation's seeded one).
pub async fn register_keys<N: Net>(
    pool: &Pool<N>,
    credentials: &Credentials,
    kdf: KdfParams,
    keys: UserKeys,
    rng: &mut (impl rand::CryptoRng + ?Sized),
) -> Result<(Registered, UserKeys), ClientError> {
    let wrapped = keys.wrap(rng, &credentials.username, &credentials.password, &kdf)?;
    let request = Request::Register(Register {
        username: credentials.username.clone(),
        login_secret: credentials.secret(),
        public_key: Blob(keys.public().to_der()),
        wrapped_private_key: Blob(wrapped),
        kdf: kdf_wire(&kdf),
    });
    match pool.call(request, Default::default()).await?.msg {
        Response::Registered(r) => Ok((r, keys)),
        other => Err(unexpected("register", &other)),
    }
}

/// Signs in and unwraps the private key; `keys` skips the unwrap when this
/// device already holds them.
pub async fn login<N: Net>(
    pool: Pool<N>,
    credentials: &Credentials,
    device_id: Option<String>,
    keys: Option<UserKeys>,
) -> Result<(Session<N>, SessionInfo), ClientError> {
    let request = Request::Login(Login {
        username: credentials.username.clone(),
        login_secret: credentials.secret(),
        device_id,
    });
    let info = match pool.call(request, Default::default()).await?.msg {
        Response::Session(info) => info,
        other => return Err(unexpected("login", &other)),
    };
    // Later connections sign in with the token; the first already is.
    pool.set_token(Some(info.token.clone()));
    let keys = match keys {
        Some(keys) => keys,
        None => {
            let Response::PrivateKey(private) = pool
                .call(Request::PrivateKeyGet, Default::default())
                .await?
                .msg
            else {
                return Err(ClientError::Protocol(
                    "no private key in answer to private_key_get".into(),
                ));
            };
            let kdf = kdf_params(&private.kdf)?;
            UserKeys::unwrap(
                private.wrapped_private_key.as_bytes(),
                &credentials.username,
                &credentials.password,
                &kdf,
            )?
        }
    };
    Ok((Session::new(pool, info.username.clone(), keys), info))
}

/// Registers this device (name and MAC) and binds the session to it.
pub async fn register_device<N: Net>(
    session: &Session<N>,
    name: &str,
    mac: &str,
) -> Result<DeviceInfo, ClientError> {
    let request = Request::DeviceRegister(DeviceRegister {
        name: name.into(),
        mac: mac.into(),
        write_id: Some(session.write_id()),
    });
    match session.call(request).await? {
        Response::Device(d) => Ok(d),
        other => Err(unexpected("device_register", &other)),
    }
}

/// The MAC address of the first real network interface (one backed by a
/// device, not `lo` or a virtual bridge), as Linux lists them.
pub fn first_mac() -> Option<String> {
    let mut names: Vec<_> = std::fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    let read = |dir: &std::path::Path| {
        std::fs::read_to_string(dir.join("address"))
            .ok()
            .map(|a| a.trim().to_owned())
            .filter(|a| name::normalize_mac(a).is_ok() && a != "00:00:00:00:00:00")
    };
    names
        .iter()
        .filter(|dir| dir.join("device").exists())
        .find_map(|dir| read(dir))
        .or_else(|| {
            names
                .iter()
                .filter(|dir| dir.file_name().is_some_and(|n| n != "lo"))
                .find_map(|dir| read(dir))
        })
}

/// This machine's host name.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}
