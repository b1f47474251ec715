//! Snakepit pools on many hosts, over NATS (work in progress).
