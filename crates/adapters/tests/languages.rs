//! Every bundled bridge runs real calls through the pool, in both codecs,
//! from the embedded copy of its files (as a dependent project would).

use serde_json::json;
use snakepit_adapters::{Bridge, Language};
use snakepit_core::{Pool, WireCodec};

fn node_modules() -> String {
    // The MessagePack package the Node bridge's tests installed (`npm ci`).
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bridges/node/node_modules"
    )
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_language_in_every_codec() {
    for lang in [Language::Python, Language::Node, Language::Ruby] {
        for codec in [WireCodec::Json, WireCodec::MsgPack] {
            let adapter = Bridge::generic(lang)
                .codec(codec)
                .env("NODE_PATH", node_modules());
            let pool = Pool::builder(adapter)
                .size(2)
                .start()
                .await
                .unwrap_or_else(|e| panic!("{lang:?} {codec}: {e}"));
            let r = pool
                .execute("compute", json!({"operation": "add", "a": 5, "b": 3}))
                .await
                .unwrap();
            assert_eq!(r["result"], 8, "{lang:?} {codec}");
            let r = pool
                .execute(
                    "echo",
                    json!({"message": "héllo", "list": [1, 2.5, null, true]}),
                )
                .await
                .unwrap();
            assert_eq!(
                r["echoed"],
                json!({"message": "héllo", "list": [1, 2.5, null, true]}),
                "{lang:?} {codec}"
            );
            let err = pool
                .execute("compute", json!({"operation": "divide", "a": 1, "b": 0}))
                .await
                .unwrap_err();
            assert_eq!(
                err.remote().map(|r| r.message.as_str()),
                Some("Division by zero"),
                "{lang:?} {codec}"
            );
            let err = pool
                .execute("no_such_command", json!({}))
                .await
                .unwrap_err();
            assert_eq!(
                err.remote().and_then(|r| r.kind.as_deref()),
                Some("UnknownCommand"),
                "{lang:?} {codec}"
            );
            let ping = pool
                .execute_in_session("s", "ping", json!({}))
                .await
                .unwrap();
            assert_eq!(ping["status"], "ok");
            pool.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_interpreter_or_script_is_a_clear_start_error() {
    let err = Pool::builder(Bridge::generic(Language::Python).interpreter("/no/such/python3"))
        .size(1)
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/no/such/python3"), "{err}");
    let err = Pool::builder(Bridge::python("/no/such/worker.py"))
        .size(1)
        .start()
        .await
        .unwrap_err();
    let snakepit_core::Error::StartFailed(e) = &err else {
        panic!("{err}")
    };
    assert!(e.stderr_tail.contains("/no/such/worker.py"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_scripts_import_the_bundled_bridge_in_each_language() {
    let dir = std::env::temp_dir().join(format!("snakepit-langs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let py = dir.join("w.py");
    std::fs::write(&py, "import snakepit_bridge\nw = snakepit_bridge.Worker()\n@w.command('hi')\ndef hi(args):\n    print('to stderr')\n    return {'lang': 'python', 'name': args['name']}\nw.run()\n").unwrap();
    let js = dir.join("w.js");
    std::fs::write(&js, "const { Worker } = require('snakepit-bridge');\nconsole.log('to stderr');\nnew Worker({ commands: { async hi(args) { return { lang: 'node', name: args.name }; } } }).run();\n").unwrap();
    let rb = dir.join("w.rb");
    std::fs::write(&rb, "require 'snakepit_bridge'\nw = SnakepitBridge::Worker.new\nw.command('hi') { |args, _ctx| puts 'to stderr'; { 'lang' => 'ruby', 'name' => args['name'] } }\nw.run\n").unwrap();
    for (adapter, lang) in [
        (Bridge::python(&py), "python"),
        (Bridge::node(&js), "node"),
        (Bridge::ruby(&rb), "ruby"),
    ] {
        let pool = Pool::builder(adapter)
            .size(1)
            .start()
            .await
            .unwrap_or_else(|e| panic!("{lang}: {e}"));
        let r = pool.execute("hi", json!({"name": "x"})).await.unwrap();
        assert_eq!(r, json!({"lang": lang, "name": "x"}));
        pool.shutdown().await.unwrap();
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// bridges/node/README.md and docs/bridges.md: MessagePack needs
/// `@msgpack/msgpack`, found in a `node_modules` next to the script. So it
/// is for a CommonJS script and for an ES module (`.mjs`, which has no
/// `require.main` to look from), with nothing on `NODE_PATH`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_worker_finds_msgpack_next_to_its_script_commonjs_or_es_module() {
    let dir = std::env::temp_dir().join(format!("snakepit-node-beside-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(node_modules(), dir.join("node_modules")).unwrap();
    for (name, source) in [
        (
            "w.cjs",
            "const { Worker } = require('snakepit-bridge');\nnew Worker({ commands: { hi: () => 'cjs' } }).run();\n",
        ),
        (
            "w.mjs",
            "import { Worker } from 'snakepit-bridge';\nnew Worker({ commands: { hi: () => 'mjs' } }).run();\n",
        ),
    ] {
        let script = dir.join(name);
        std::fs::write(&script, source).unwrap();
        let pool = Pool::builder(
            Bridge::node(&script)
                .codec(WireCodec::MsgPack)
                .env("NODE_PATH", ""),
        )
        .size(1)
        .start()
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let r = pool.execute("hi", json!({})).await.unwrap();
        assert_eq!(r, json!(&name[2..]), "{name}");
        pool.shutdown().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
