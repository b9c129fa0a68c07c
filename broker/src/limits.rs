//! How many client connections may be open: `max.connections` over every
//! listener, and `max.connections.per.ip` (with its overrides) per client
//! address. A connection holds an [`Admission`] for its lifetime; dropping
//! it frees the slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::config::{BrokerConfig, ConfigError};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Total,
    PerIp,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// The connection table of one broker.
pub struct ConnectionLimits {
    total_max: usize,
    per_ip_max: usize,
    overrides: HashMap<IpAddr, usize>,
    open: Arc<Mutex<Open>>,
}

/// One admitted connection's slot.
pub struct Admission {
    ip: IpAddr,
    open: Arc<Mutex<Open>>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.by_ip.remove(&self.ip);
            }
        }
    }
}

impl ConnectionLimits {
    pub fn new(config: &BrokerConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            total_max: config.max_connections,
            per_ip_max: config.max_connections_per_ip,
            overrides: config.per_ip_overrides()?.into_iter().collect(),
            open: Arc::default(),
        })
    }

    /// Admits a connection from `ip`, or says which limit it hit.
    pub fn admit(&self, ip: IpAddr) -> Result<Admission, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.total_max {
            return Err(Refusal::Total);
        }
        let max = self.overrides.get(&ip).copied().unwrap_or(self.per_ip_max);
        let here = open.by_ip.entry(ip).or_insert(0);
        if *here >= max {
            if *here == 0 {
                open.by_ip.remove(&ip);
            }
            return Err(Refusal::PerIp);
        }
        *here += 1;
        open.total += 1;
        Ok(Admission {
            ip,
            open: self.open.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_address_and_in_total_free_on_drop() {
        let config = BrokerConfig::load(
            None,
            &[
                "max.connections=3".into(),
                "max.connections.per.ip=2".into(),
                "max.connections.per.ip.overrides=\"10.0.0.9:0,10.0.0.8:3\"".into(),
            ],
        )
        .unwrap();
        let limits = ConnectionLimits::new(&config).unwrap();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limits.admit(a).unwrap();
        let _second = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).err(), Some(Refusal::PerIp));
        assert_eq!(limits.admit("10.0.0.9".parse().unwrap()).err(), Some(Refusal::PerIp));
        let _third = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).err(), Some(Refusal::Total));
        drop(first);
        assert!(limits.admit(a).is_ok());
    }
}
