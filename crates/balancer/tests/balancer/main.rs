//! The balancer in front of real `coffer-server` processes (127.0.0.2..4),
//! driven the way clients and operators do: through its listener, its admin
//! endpoint, and (for the binary) signals.

mod binary;
mod failover;
mod routing;
mod support;
