//! Devices: each user's machines, unique per user by name and by MAC address.

use coffer_proto::request::{DeviceRegister, DeviceRemove, DeviceRename};
use coffer_proto::response::Devices;
use coffer_proto::{Response, name};

use super::{Answer, answer, unexpected};
use crate::Server;
use crate::dispatch::Session;
use crate::error::{Result, bad_request};
use crate::store::{Applied, Change, query};

fn device_name(raw: &str) -> Result<String> {
    name::validate_label("device name", raw).map_err(|e| bad_request(e.to_string()))?;
    Ok(raw.to_owned())
}

pub(super) async fn register(server: &Server, session: &mut Session, r: DeviceRegister) -> Answer {
    let me = session.user()?.clone();
    let name = device_name(&r.name)?;
    let mac = name::normalize_mac(&r.mac).map_err(|e| bad_request(e.to_string()))?;
    let (device_id, named) = super::creation_id(server, "d", &me.username, r.write_id)?;
    let change = Change::DeviceRegister {
        username: me.username,
        session_id: me.session_id,
        device_id,
        named,
        name,
        mac,
    };
    match server.store.write(change).await? {
        Applied::Device(device) => {
            // The session now runs on this device, unless it already had one.
            if let Some(signed_in) = session.signed_in.as_mut() {
                signed_in
                    .device_id
                    .get_or_insert_with(|| device.device_id.clone());
            }
            answer(Response::Device(device))
        }
        other => Err(unexpected(other)),
    }
}

pub(super) async fn list(server: &Server, session: &Session) -> Answer {
    let me = session.user()?.username.clone();
    let devices = server
        .store
        .read(move |conn| query::devices(conn, &me))
        .await?;
    answer(Response::Devices(Devices { devices }))
}

pub(super) async fn rename(server: &Server, session: &Session, r: DeviceRename) -> Answer {
    let me = session.user()?.username.clone();
    let change = Change::DeviceRename {
        username: me,
        device_id: r.device_id,
        name: device_name(&r.name)?,
    };
    match server.store.write(change).await? {
        Applied::Device(device) => answer(Response::Device(device)),
        other => Err(unexpected(other)),
    }
}

pub(super) async fn remove(server: &Server, session: &Session, r: DeviceRemove) -> Answer {
    let me = session.user()?.username.clone();
    server
        .store
        .write(Change::DeviceRemove {
            username: me,
            device_id: r.device_id,
        })
        .await?;
    answer(Response::Ok)
}
