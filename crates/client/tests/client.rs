//! The client library and the `coffer` binary against an in-process server.

#![allow(unreachable_pub)] // the support module is shared by the test modules only

mod client {
    pub mod support;

    mod cli;
    mod connection;
    mod sync;
    mod transfers;
}
