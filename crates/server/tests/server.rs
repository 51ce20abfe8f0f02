//! The server in-process on port 0 (and the binary), spoken to over TLS by a
//! minimal test client: the whole account → device → folder → share → upload
//! → download → history → unshare story, every bad input, resume, restart.

#![allow(unreachable_pub)] // the support module is shared by the test modules only

mod server {
    pub mod support;

    mod accounts;
    mod cluster;
    mod events;
    mod files;
    mod folders;
    mod lifecycle;
    mod protocol;
}
