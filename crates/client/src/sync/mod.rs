//! Keeping attached folders in sync (`coffer sync`), piece by piece:
//!
//! - [`ignore`]: what is never synced (editor and temporary files, the
//!   daemon's own temporary files, `.cofferignore` patterns);
//! - [`scan`]: the disk compared with the local index — what changed, hashed
//!   only where metadata moved, renames paired into moves;
//! - [`index`]: what the scanner last saw of each path, with the content
//!   address each plaintext chunk was stored under (delta uploads);
//! - [`queue`]: local changes waiting to be sent, persisted in the home's
//!   SQLite so that a crash or `kill -9` loses none.

pub mod daemon;
pub mod engine;
pub mod ignore;
pub mod index;
pub mod queue;
pub mod scan;
pub mod state;
