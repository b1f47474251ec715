//! Round 6: carrying a configuration over from the original Elixir
//! Snakepit (/work/shared/reference/snakepit-elixir-README.md, "Advanced
//! Configuration").
//!
//! README.md, "Configuration": "`PoolConfig` has every setting of the
//! original, with its defaults". Each setting of the original has a field
//! here with the original's default, given in milliseconds as the
//! original's were; and a setting left under its original name is refused
//! with an error naming it, never silently dropped (which would run the
//! pool on a default the user meant to change).

use std::time::Duration;

use snakepit_core::PoolConfig;

/// The original's setting, ours, and the original's default (milliseconds
/// for the timeouts, as in its README; a count otherwise).
const SETTINGS: &[(&str, &str, u64)] = &[
    ("pool_startup_timeout", "startup_timeout_ms", 10_000),
    ("pool_queue_timeout", "queue_timeout_ms", 5_000),
    ("worker_init_timeout", "worker_init_timeout_ms", 20_000),
    (
        "worker_health_check_interval",
        "health_check_interval_ms",
        30_000,
    ),
    (
        "worker_shutdown_grace_period",
        "shutdown_grace_period_ms",
        2_000,
    ),
    ("cleanup_retry_interval", "cleanup_retry_interval_ms", 100),
    ("cleanup_max_retries", "cleanup_max_retries", 10),
    ("pool_max_queue_size", "max_queue_size", 1_000),
];

/// Our field `ours` of `config`, as the number the original wrote.
fn value_of(config: &PoolConfig, ours: &str) -> u64 {
    let ms = |d: Duration| d.as_millis() as u64;
    match ours {
        "startup_timeout_ms" => ms(config.startup_timeout),
        "queue_timeout_ms" => ms(config.queue_timeout),
        "worker_init_timeout_ms" => ms(config.worker_init_timeout),
        "health_check_interval_ms" => ms(config.health_check_interval),
        "shutdown_grace_period_ms" => ms(config.shutdown_grace_period),
        "cleanup_retry_interval_ms" => ms(config.cleanup_retry_interval),
        "cleanup_max_retries" => u64::from(config.cleanup_max_retries),
        "max_queue_size" => config.max_queue_size as u64,
        other => panic!("no field {other} in this table"),
    }
}

#[test]
fn every_setting_of_the_original_has_a_field_with_its_default() {
    let defaults = PoolConfig::default();
    for &(original, ours, default) in SETTINGS {
        assert_eq!(
            value_of(&defaults, ours),
            default,
            "{ours} (the original's {original}) defaults to the original's value"
        );
        // Set under our name, in the original's unit.
        let set = default * 3 + 1;
        let config: PoolConfig = serde_json::from_str(&format!(r#"{{"{ours}": {set}}}"#))
            .unwrap_or_else(|e| panic!("{ours}: {e}"));
        assert_eq!(value_of(&config, ours), set, "{ours}");
    }
    // `pool_config: %{pool_size: N}`: the same name; the default is twice
    // the cores, as the original's `System.schedulers_online() * 2`.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(defaults.pool_size, cores * 2);
    let config: PoolConfig = serde_json::from_str(r#"{"pool_size": 16}"#).unwrap();
    assert_eq!(config.pool_size, 16);
}

#[test]
fn a_setting_under_the_originals_name_is_refused_naming_it() {
    for &(original, ours, _) in SETTINGS {
        if original == ours {
            continue;
        }
        let err = serde_json::from_str::<PoolConfig>(&format!(r#"{{"{original}": 1234}}"#))
            .expect_err(original);
        let text = err.to_string();
        assert!(
            text.contains(original),
            "the error names the setting {original}: {text}"
        );
    }
    // The original's nesting (`pool_config: %{pool_size: 8}`) too.
    let err = serde_json::from_str::<PoolConfig>(r#"{"pool_config": {"pool_size": 8}}"#)
        .expect_err("pool_config");
    assert!(err.to_string().contains("pool_config"), "{err}");
}
