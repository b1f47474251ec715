//! The floor under a cluster call on this machine: the p50 of a bare NATS
//! request and reply (empty payload) between two connections, the
//! responder on a runtime of its own thread, as a host would answer; and
//! the same with the responder in a process of its own (`nats_floor
//! respond URL`, started by this example).
//!
//! `NATS_URL=nats://127.0.0.1:4222 cargo run --release -p snakepit-cluster --example nats_floor`

use std::time::{Duration, Instant};

use futures_util::StreamExt;

async fn respond(url: String, subject: &str) {
    let nats = async_nats::connect(&url).await.unwrap();
    let mut sub = nats.subscribe(subject.to_owned()).await.unwrap();
    nats.flush().await.unwrap();
    if subject == "floor.process" {
        println!("ready");
    }
    while let Some(m) = sub.next().await {
        if let Some(r) = m.reply {
            let _ = nats.publish(r, m.payload).await;
        }
    }
}

async fn p50(nats: &async_nats::Client, subject: &str, n: usize) -> Duration {
    for _ in 0..500 {
        nats.request(subject.to_owned(), "x".into()).await.unwrap();
    }
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Instant::now();
        nats.request(subject.to_owned(), "x".into()).await.unwrap();
        t.push(s.elapsed());
    }
    t.sort();
    t[n / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    if args.get(1).map(String::as_str) == Some("respond") {
        rt().block_on(respond(args[2].clone(), "floor.process"));
        return;
    }
    let Ok(url) = std::env::var("NATS_URL") else {
        eprintln!(
            "nats_floor: set NATS_URL to a running nats-server (NATS_URL=nats://127.0.0.1:4222)"
        );
        std::process::exit(2);
    };
    let u = url.clone();
    std::thread::spawn(move || rt().block_on(respond(u, "floor.thread")));
    rt().block_on(async {
        let nats = async_nats::connect(&url).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        println!(
            "thread responder p50 {:?}",
            p50(&nats, "floor.thread", 5000).await
        );
    });
    #[allow(clippy::disallowed_methods)] // the responder process, not a worker
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["respond", &url])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    rt().block_on(async {
        let nats = async_nats::connect(&url).await.unwrap();
        println!(
            "process responder p50 {:?}",
            p50(&nats, "floor.process", 5000).await
        );
    });
    let _ = child.kill();
    let _ = child.wait();
}
