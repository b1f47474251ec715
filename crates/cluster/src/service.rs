//! A host's registration with the NATS service API ("micro", ADR-32).
//!
//! Each host is an instance of the service `snakepit-<cluster>` with one
//! endpoint, `status`. Tools such as `nats micro ls`, `nats micro info`
//! and `nats micro stats`, and [`Client::status`](crate::Client::status),
//! find the hosts through the API's `PING`, `INFO` and `STATS` requests,
//! sent to `$SRV.<VERB>`, `$SRV.<VERB>.<name>` or
//! `$SRV.<VERB>.<name>.<id>`.
//!
//! This crate answers those requests itself, with the JSON documents of
//! async-nats's service types, rather than through async-nats's
//! `Service`: that one answers them to whatever reply subject a request
//! names, so anyone allowed to send a `PING` could have a host publish its
//! answer where only the host may write (a session's key in the sessions
//! bucket, with the host's permissions). Here a request whose reply
//! subject no client can have ([`wire::answerable`]) gets no answer, for
//! the three verbs and for the `status` endpoint alike.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::service::endpoint;
use async_nats::{Client, Message, Subject};
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, SelectAll, StreamExt};

use crate::wire;

/// The queue group of the `status` endpoint, as async-nats's services
/// use by default: each host's endpoint subject is its own, so the group
/// only keeps one answer per request should two hosts share an id.
const QUEUE_GROUP: &str = "q";

/// The API's verbs this crate answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Ping,
    Info,
    Stats,
    /// A request to the `status` endpoint.
    Status,
}

impl Asked {
    /// The verb's token in `$SRV.<verb>...`; none for the endpoint.
    fn verb(self) -> Option<&'static str> {
        match self {
            Asked::Ping => Some("PING"),
            Asked::Info => Some("INFO"),
            Asked::Stats => Some("STATS"),
            Asked::Status => None,
        }
    }
}

/// What a host registers: the service's name, version, description and
/// metadata, and its `status` endpoint's subject.
pub(crate) struct Registration {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) description: String,
    pub(crate) metadata: HashMap<String, String>,
    pub(crate) status_subject: String,
}

/// A registered service instance, answering until [`Service::serve`]'s
/// future is dropped (its subscriptions end with it).
pub(crate) struct Service {
    nats: Client,
    reg: Registration,
    id: String,
    started: async_nats::datetime::DateTime,
    requests: stream::Fuse<SelectAll<BoxStream<'static, (Asked, Message)>>>,
    /// The `status` endpoint's figures, as `STATS` reports them.
    answered: usize,
    processing: Duration,
}

impl Service {
    /// Subscribes to the three verbs, each in its three forms, and to the
    /// `status` endpoint.
    pub(crate) async fn start(nats: &Client, reg: Registration) -> Result<Self, String> {
        let id = instance_id();
        let mut subs: Vec<BoxStream<'static, (Asked, Message)>> = Vec::new();
        for asked in [Asked::Ping, Asked::Info, Asked::Stats] {
            let verb = asked.verb().unwrap_or_default();
            for subject in [
                format!("$SRV.{verb}"),
                format!("$SRV.{verb}.{}", reg.name),
                format!("$SRV.{verb}.{}.{id}", reg.name),
            ] {
                let sub = nats.subscribe(subject).await.map_err(|e| e.to_string())?;
                subs.push(sub.map(move |m| (asked, m)).boxed());
            }
        }
        let status = nats
            .queue_subscribe(reg.status_subject.clone(), QUEUE_GROUP.to_owned())
            .await
            .map_err(|e| e.to_string())?;
        subs.push(status.map(|m| (Asked::Status, m)).boxed());
        Ok(Service {
            nats: nats.clone(),
            reg,
            id,
            started: async_nats::datetime::now(),
            requests: stream::select_all(subs).fuse(),
            answered: 0,
            processing: Duration::ZERO,
        })
    }

    /// Answers requests as they come, the `status` endpoint's with
    /// `status()`, until the subscriptions end. Each answer is awaited in
    /// this task, which is the host's own: its serving loop never waits on
    /// a service API request.
    pub(crate) async fn serve(mut self, status: impl Fn() -> Bytes) {
        while let Some((asked, msg)) = self.requests.next().await {
            let issued = Instant::now();
            // A request with no reply subject, or one no client can have
            // (a system subject such as a session's key in the KV bucket,
            // a wildcard, ...), gets no answer: anyone who may ask could
            // otherwise have the host write there, with its permissions.
            let Some(to) = msg.reply.filter(|to| wire::answerable(to.as_str())) else {
                tracing::debug!(target: "snakepit::cluster", subject = %msg.subject,
                    "a service API request with a reply subject no client has; not answered");
                continue;
            };
            let body = match asked {
                Asked::Ping => self.ping(),
                Asked::Info => self.info(),
                Asked::Stats => self.stats(),
                Asked::Status => status(),
            };
            answer(&self.nats, &to, body).await;
            if asked == Asked::Status {
                self.answered += 1;
                self.processing += issued.elapsed();
            }
        }
    }

    fn ping(&self) -> Bytes {
        to_json(&async_nats::service::PingResponse {
            kind: "io.nats.micro.v1.ping_response".to_owned(),
            name: self.reg.name.clone(),
            id: self.id.clone(),
            version: self.reg.version.clone(),
            metadata: self.reg.metadata.clone(),
        })
    }

    fn info(&self) -> Bytes {
        to_json(&async_nats::service::Info {
            kind: "io.nats.micro.v1.info_response".to_owned(),
            name: self.reg.name.clone(),
            id: self.id.clone(),
            description: self.reg.description.clone(),
            version: self.reg.version.clone(),
            metadata: self.reg.metadata.clone(),
            endpoints: vec![endpoint::Info {
                name: "status".to_owned(),
                subject: self.reg.status_subject.clone(),
                queue_group: QUEUE_GROUP.to_owned(),
                metadata: HashMap::new(),
            }],
        })
    }

    fn stats(&self) -> Bytes {
        let average = match u32::try_from(self.answered) {
            Ok(0) | Err(_) => Duration::ZERO,
            Ok(n) => self.processing / n,
        };
        to_json(&async_nats::service::Stats {
            kind: "io.nats.micro.v1.stats_response".to_owned(),
            name: self.reg.name.clone(),
            id: self.id.clone(),
            version: self.reg.version.clone(),
            started: self.started,
            endpoints: vec![endpoint::Stats {
                name: "status".to_owned(),
                subject: self.reg.status_subject.clone(),
                requests: self.answered,
                errors: 0,
                processing_time: self.processing,
                average_processing_time: average,
                last_error: None,
                data: None,
                queue_group: QUEUE_GROUP.to_owned(),
            }],
        })
    }
}

async fn answer(nats: &Client, to: &Subject, body: Bytes) {
    if let Err(e) = nats.publish(to.clone(), body).await {
        tracing::debug!(target: "snakepit::cluster", "service API answer to {to} lost: {e}");
    }
}

fn to_json(v: &impl serde::Serialize) -> Bytes {
    serde_json::to_vec(v).unwrap_or_default().into()
}

/// A service instance id: 22 characters from `A-Z a-z 0-9`, as long as
/// the ids async-nats gives, unique per instance in practice (each
/// `RandomState` is seeded afresh, and the clock and process id are mixed
/// in).
fn instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut id = String::with_capacity(22);
    for half in 0..2u8 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(nanos);
        h.write_u8(half);
        let mut n = h.finish();
        for _ in 0..11 {
            id.push(ALPHABET[(n % 62) as usize] as char);
            n /= 62;
        }
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_subject_tokens_and_differ() {
        let a = instance_id();
        let b = instance_id();
        assert_eq!(a.len(), 22);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, b);
    }
}
