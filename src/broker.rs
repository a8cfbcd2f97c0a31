//! Connecting to an MQTT broker, shared by the live source, the warning sink, `record` and
//! `replay --to-mqtt`: the broker URL (`mqtt://host:port`, `mqtts://host:port` for TLS with
//! rustls), credentials from the config or the environment (never the command line), and
//! the rumqttc options built from them.

use std::time::Duration;

use rumqttc::{MqttOptions, QoS, TlsConfiguration, Transport};

use crate::config::MqttConfig;

/// Environment variables that override the config's credentials.
pub(crate) const USERNAME_ENV: &str = "CITYOPS_MQTT_USERNAME";
pub(crate) const PASSWORD_ENV: &str = "CITYOPS_MQTT_PASSWORD";

/// Largest packet accepted or sent (gateway payloads with many readings fit easily).
const MAX_PACKET_BYTES: usize = 16 * 1024 * 1024;

/// A broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl std::str::FromStr for BrokerUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("`{url}`: expected mqtt://host:port or mqtts://host:port"))?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => return Err(format!("`{url}`: unknown scheme `{other}` (mqtt or mqtts)")),
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('@') {
            return Err(format!(
                "`{url}`: credentials do not belong in the URL; set {USERNAME_ENV}/{PASSWORD_ENV} or [mqtt] username/password"
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>().map_err(|_| format!("`{url}`: bad port `{port}`"))?,
            ),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err(format!("`{url}`: no host"));
        }
        Ok(BrokerUrl {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

/// Maps 0/1/2 to a QoS.
pub fn qos(level: u8) -> Result<QoS, String> {
    match level {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        other => Err(format!("QoS must be 0, 1 or 2, got {other}")),
    }
}

/// rumqttc options for one client of `url`.
pub(crate) fn options(url: &BrokerUrl, config: &MqttConfig, client_id: &str) -> Result<MqttOptions, String> {
    let mut options = MqttOptions::new(client_id, url.host.clone(), url.port);
    options
        .set_keep_alive(Duration::from_millis(config.keep_alive.0.max(5_000) as u64))
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_inflight(config.inflight.max(1))
        .set_clean_session(config.clean_session);
    let username = std::env::var(USERNAME_ENV).ok().or_else(|| config.username.clone());
    let password = std::env::var(PASSWORD_ENV).ok().or_else(|| config.password.clone());
    if let Some(username) = username {
        options.set_credentials(username, password.unwrap_or_default());
    }
    if url.tls {
        // rumqttc is built without a default crypto provider: use ring (once per process).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let path = config
            .ca_file
            .as_ref()
            .ok_or_else(|| "mqtts:// needs [mqtt] ca_file (the broker's CA, PEM)".to_string())?;
        let ca = std::fs::read(path).map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
        options.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth: None,
        }));
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_default_ports_and_refuse_credentials() {
        let url: BrokerUrl = "mqtt://127.0.0.1:1884".parse().expect("parses");
        assert_eq!((url.host.as_str(), url.port, url.tls), ("127.0.0.1", 1884, false));
        let url: BrokerUrl = "mqtts://broker.city".parse().expect("parses");
        assert_eq!((url.port, url.tls), (8883, true));
        assert!("mqtt://user:secret@host".parse::<BrokerUrl>().is_err());
        assert!("http://host".parse::<BrokerUrl>().is_err());
        assert!("mqtt://host:port".parse::<BrokerUrl>().is_err());
    }
}
